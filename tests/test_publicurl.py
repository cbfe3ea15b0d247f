"""Which public URLs carriers on the internet could reach (gateway/publicurl.py)."""
import pytest

from gateway.publicurl import unreachable_reason


@pytest.mark.parametrize("url, why", [
    ("http://127.0.0.1:8080", "loopback"), ("https://127.0.0.5", "loopback"), ("https://[::1]:8443", "loopback"),
    ("https://localhost", "local name"), ("https://gw.local", "local name"),
    ("https://10.1.2.3", "private"), ("https://192.168.1.10", "private"), ("https://172.16.0.1", "private"),
    ("https://169.254.1.1", "private"), ("https://0.0.0.0", "private"),
    ("http://gw.example.com", "not https"), ("http://8.8.4.4:8080", "not https"),
])
def test_unreachable(url, why):
    assert why in unreachable_reason(url)


@pytest.mark.parametrize("url", ["https://gw.example.com", "https://gw.example.com:8443/base", "https://8.8.8.8"])
def test_reachable(url):
    assert unreachable_reason(url) is None
