"""Getty's official Node SDK (`gettyimages-api` from npm) against the sandbox over HTTPS.

The SDK only speaks https on port 443, to a host name it is given: so the sandbox listens
with TLS on 127.0.0.1:443 and Node trusts its CA through `NODE_EXTRA_CA_CERTS`. Through the
SDK's public calls: the three grants, the four search variants and plain search with
`largest_downloads`, images and videos by id and by ids, image and video download POSTs with
options, history and products (custom requests), then every delivery URI fetched with Node's
`https.get`. Skipped, with the reason, where node or npm is missing, where port 443 cannot be
bound (not root, or in use), or where npm cannot install the package (offline).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bulkgetty.sandbox import SandboxThread

SDK = "gettyimages-api@6.7.2"
NPM_TIMEOUT = 180
NODE_TIMEOUT = 60

SCRIPT = r"""
const Api = require("gettyimages-api");
const https = require("https");
const env = process.env;
const host = "127.0.0.1";
const key = { apiKey: env.GETTY_API_KEY, apiSecret: env.GETTY_API_SECRET };
const user = { ...key, username: env.GETTY_USERNAME, password: env.GETTY_PASSWORD };

function fetch(uri) {
  return new Promise((resolve, reject) => {
    https.get(uri, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        const body = Buffer.concat(chunks);
        resolve({
          status: res.statusCode,
          type: res.headers["content-type"],
          length: Number(res.headers["content-length"]),
          received: body.length,
          head: body.subarray(0, 12).toString("hex"),
        });
      });
      res.on("error", reject);
    }).on("error", reject);
  });
}

async function main() {
  const out = {};
  const cc = new Api(key, host, host);
  out.client_credentials = await cc.getAccessToken();
  const client = new Api(user, host, host);
  out.password = await client.getAccessToken();
  const refreshed = new Api({ ...key, refresh_token: out.password.refresh_token }, host, host);
  out.refresh_token = await refreshed.getAccessToken();

  out.search_images = await client.searchimages().withPhrase("city")
    .withResponseField(["id", "title", "largest_downloads"]).withPageSize(5).execute();
  out.search_videos = await client.searchvideos().withPhrase("")
    .withResponseField(["id", "largest_downloads"]).withPageSize(5).execute();
  out.images_creative = await client.searchimagescreative().withPhrase("")
    .withSortOrder("best_match").withPageSize(5).execute();
  out.images_editorial = await client.searchimageseditorial().withPhrase("")
    .withPageSize(5).execute();
  out.videos_creative = await client.searchvideoscreative().withPhrase("").withPageSize(5)
    .execute();
  out.videos_editorial = await client.searchvideoseditorial().withPhrase("").withPageSize(5)
    .execute();

  const imageId = out.search_images.images[0].id;
  const videoId = out.search_videos.videos[0].id;
  out.image = await client.images().withId(imageId).withResponseField("detail_set").execute();
  out.images = await client.images().withIds([imageId, "1167612765", "no-such-image"])
    .execute();
  out.video = await client.videos().withId(videoId).execute();
  out.videos = await client.videos().withIds([videoId, "1185436712"]).execute();

  out.image_download = await client.downloadsimages().withId(imageId).withHeight(612)
    .withProductType("premiumaccess").withFileType("jpg").execute();
  out.video_download = await client.downloadsvideos().withId(videoId).withSize("hd1")
    .withProductId(1001).execute();
  out.history = await client.customrequest().withMethod("get").withRoute("downloads")
    .withQueryParameters({ page_size: 10 }).execute();
  out.products = await client.customrequest().withMethod("get").withRoute("products")
    .withQueryParameters({}).execute();

  out.image_file = await fetch(out.image_download.uri);
  out.video_file = await fetch(out.video_download.uri);
  out.thumb_file = await fetch(out.image.images[0].display_sizes[0].uri);
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => {
  process.stderr.write(`${err.statusCode || ""} ${err.stack || err}\n`);
  process.exit(1);
});
"""


def _install_sdk(folder: Path) -> Path:
    """`npm install` into this test's folder (its cache too): nothing global is touched."""
    folder.mkdir()
    try:
        done = subprocess.run(
            [
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--cache",
                str(folder / ".npm-cache"),
                "--prefix",
                str(folder),
                SDK,
            ],
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install {SDK} took over {NPM_TIMEOUT} s (offline?)")
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"npm install {SDK} failed (offline?): {tail}")
    return folder


def _sandbox_on_443() -> SandboxThread:
    sb = SandboxThread(tls=True, port=443)
    try:
        sb.start()
    except OSError as exc:
        pytest.skip(f"cannot listen on 127.0.0.1:443 (the SDK's only port): {exc.strerror}")
    return sb


def test_official_node_sdk_drives_the_https_sandbox_on_443(tmp_path: Path) -> None:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (.ci/run installs them)")
    sdk = _install_sdk(tmp_path / "sdk")
    (sdk / "drive.js").write_text(SCRIPT)
    sb = _sandbox_on_443()
    try:
        assert sb.ca_file is not None
        env = {
            "PATH": str(Path(shutil.which("node") or "node").parent),
            "NODE_EXTRA_CA_CERTS": sb.ca_file,
            **{k: v for k, v in sb.credentials_env().items() if k.startswith("GETTY_")},
        }
        done = subprocess.run(
            ["node", "drive.js"],
            cwd=sdk,
            env=env,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT,
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        _check(out, sb)
    finally:
        sb.close()


def _check(out: dict[str, Any], sb: SandboxThread) -> None:
    for grant in ("client_credentials", "password", "refresh_token"):
        assert out[grant] and out[grant]["access_token"], grant
    assert out["password"]["refresh_token"]

    image = out["search_images"]["images"][0]
    assert out["search_images"]["result_count"] > 0
    assert image["largest_downloads"][0]["uri"].startswith("https://127.0.0.1/v3/downloads/")
    assert out["search_videos"]["videos"][0]["largest_downloads"]
    for name, key, family in (
        ("images_creative", "images", "creative"),
        ("images_editorial", "images", "editorial"),
        ("videos_creative", "videos", "creative"),
        ("videos_editorial", "videos", "editorial"),
    ):
        items = out[name][key]
        assert items and {i["asset_family"] for i in items} == {family}, name

    assert out["image"]["images"][0]["id"] == image["id"]
    assert {"artist", "caption", "display_sizes"} <= set(out["image"]["images"][0])
    assert [i["id"] for i in out["images"]["images"]] == [image["id"], "1167612765"]
    assert out["images"]["images_not_found"] == ["no-such-image"]
    assert out["video"]["videos"][0]["id"] == out["search_videos"]["videos"][0]["id"]
    assert len(out["videos"]["videos"]) == 2

    assert out["image_download"]["uri"].startswith("https://127.0.0.1:")
    assert out["video_download"]["uri"].startswith("https://127.0.0.1:")
    spent = [(s.asset_type, s.size_name, s.product_type) for s in sb.ledger]
    assert spent == [("image", "612", "premiumaccess"), ("video", "hd1", "premiumaccess")]
    assert out["history"]["result_count"] == 2
    assert {p["type"] for p in out["products"]["products"]} >= {"premiumaccess"}

    for name, content_type, head in (
        ("image_file", "image/jpeg", "ffd8ff"),
        ("video_file", "video/mp4", None),
        ("thumb_file", "image/jpeg", "ffd8ff"),
    ):
        got = out[name]
        assert got["status"] == 200 and got["type"] == content_type, name
        assert got["received"] == got["length"], name
        if head:
            assert got["head"].startswith(head), name
    assert bytes.fromhex(out["video_file"]["head"])[4:8] == b"ftyp"
