"""The Getty API client: tokens, the one retry policy, the rate limit, HTTP sessions."""
