"""Settings precedence: command-line flags > GATEWAY_* environment > TOML file > defaults."""
import pytest

from gateway.config import Settings, load_settings


def test_defaults_run_with_nothing_configured():
    s = load_settings({}, environ={})
    assert (s.http_port, s.sip_port, s.engine) == (8080, 5060, "greeting")
    assert s.db_url.endswith("gateway.db") and s.public_base == "http://127.0.0.1:8080"


def test_flags_override_env_override_toml(tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[gateway]\nhttp_port = 9000\nsip_port = 5070\nengine = "echo"\nwebhook_timeout = 2.5\n')
    env = {"GATEWAY_SIP_PORT": "5080", "GATEWAY_ENGINE": "ws://127.0.0.1:9/x", "GATEWAY_ENABLE_SIP": "false",
           "GATEWAY_CARRIERS": "twilio, exotel", "GATEWAY_WEBHOOK_RETRIES": "2"}
    s = load_settings({"engine": "greeting", "http_port": None}, config_file=str(cfg), environ=env)
    assert s.http_port == 9000                   # TOML (flag given as None is "not set")
    assert s.sip_port == 5080                    # env beats TOML, coerced to int
    assert s.engine == "greeting"                # flag beats env
    assert s.enable_sip is False and s.carriers == ["twilio", "exotel"]
    assert s.webhook_retries == 2 and s.webhook_timeout == 2.5


def test_unknown_toml_setting_is_an_error(tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text("http_prot = 1\n")
    with pytest.raises(ValueError, match="http_prot"):
        load_settings({}, config_file=str(cfg), environ={})


def test_public_urls_follow_scheme():
    s = Settings(public_url="https://gw.example.com/")
    assert s.public_base == "https://gw.example.com" and s.public_ws_base == "wss://gw.example.com"


async def test_webhook_settings_reach_the_dispatcher(make_gateway):
    gw = await make_gateway(webhook_retries=3, webhook_timeout=1.5)
    assert (gw.webhooks.retries, gw.webhooks.timeout) == (3, 1.5)
