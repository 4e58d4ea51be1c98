"""meshserve package."""
