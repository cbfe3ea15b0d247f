"""Provider presets fill defaults only where fields are empty; explicit fields win; shapes are checked."""
import pytest

from carriers.sip_presets import PRESETS, TWILIO_SIGNALING_IPS, PresetError, apply_preset, parse_hostport


def base(**kw):
    f = {"phone_number": "+15550001111", "sip_host": "trunk.example.com", "sip_trunk_name": "t1"}
    f.update(kw)
    return f


def test_other_defaults():
    out = apply_preset(base())
    assert out["preset"] == "other"
    assert (out["sip_port"], out["transport"], out["register"], out["sip_strip_plus"], out["auth_type"]) == (
        None, "udp", False, False, "ip")   # a host name without a port: DNS SRV decides (RFC 3263)
    assert out["allowed_ips"] == []


def test_default_port_for_an_ip_address_only():
    assert apply_preset(base(sip_host="192.0.2.7", transport="TLS"))["sip_port"] == 5061
    assert apply_preset(base(sip_host="192.0.2.7"))["sip_port"] == 5060
    assert apply_preset(base(transport="TLS"))["sip_port"] is None
    assert apply_preset(base(sip_port="5070"))["sip_port"] == 5070
    with pytest.raises(PresetError):
        apply_preset(base(sip_host="192.0.2.7", sip_port="x"))


def test_twilio_preset():
    out = apply_preset(base(preset="twilio", sip_host="acme.pstn.twilio.com", sip_username="u", sip_password="p"))
    assert out["register"] is False and out["sip_strip_plus"] is False and out["sip_port"] == 5060
    assert out["allowed_ips"] == list(TWILIO_SIGNALING_IPS)
    # localized edge URI is accepted too
    apply_preset(base(preset="twilio", sip_host="acme.pstn.ashburn.twilio.com"))


@pytest.mark.parametrize("host", ["sip.twilio.com", "acme.twilio.com", "127.0.0.1", "pstn.twilio.com.evil.com"])
def test_twilio_rejects_non_termination_host(host):
    with pytest.raises(PresetError) as e:
        apply_preset(base(preset="twilio", sip_host=host))
    assert e.value.field == "sip_host"


def test_twilio_rejects_register():
    with pytest.raises(PresetError) as e:
        apply_preset(base(preset="twilio", sip_host="a.pstn.twilio.com", register=True, sip_username="u",
                          sip_password="p"))
    assert e.value.field == "register"


def test_ringcentral_preset_and_override():
    f = base(preset="ringcentral", sip_host="sip.ringcentral.com", sip_username="16505550100",
             sip_password="pw", auth_username="802398765")
    out = apply_preset(f)
    assert out["register"] is True and out["sip_port"] == 5090
    assert out["outbound_proxy"] == "sip60.ringcentral.com:5090"
    assert out["sip_strip_plus"] is True
    # explicit fields override the preset
    out2 = apply_preset({**f, "outbound_proxy": "sip71.ringcentral.com:5090", "sip_port": 5096,
                         "transport": "tls", "sip_strip_plus": False})
    assert out2["outbound_proxy"] == "sip71.ringcentral.com:5090" and out2["sip_port"] == 5096
    assert out2["transport"] == "tls" and out2["sip_strip_plus"] is False


def test_ringcentral_needs_authorization_id():
    with pytest.raises(PresetError) as e:
        apply_preset(base(preset="ringcentral", sip_host="sip.ringcentral.com", sip_username="1650", sip_password="x"))
    assert e.value.field == "auth_username"


def test_vonage_preset():
    out = apply_preset(base(preset="vonage", sip_host="sip-eu1.nexmo.com", sip_username="key", sip_password="secret"))
    assert out["sip_strip_plus"] is True and out["register"] is False
    with pytest.raises(PresetError):
        apply_preset(base(preset="vonage", sip_host="sip.example.com", sip_username="k", sip_password="s"))
    with pytest.raises(PresetError) as e:
        apply_preset(base(preset="vonage", sip_host="sip.nexmo.com"))
    assert e.value.field == "sip_username"


@pytest.mark.parametrize("kw,field", [
    ({"preset": "asterisk"}, "preset"),
    ({"transport": "sctp"}, "transport"),
    ({"sip_port": 70000}, "sip_port"),
    ({"sip_host": "sip:trunk.example.com:5060"}, "sip_host"),
    ({"outbound_proxy": "proxy.example.com:99999"}, "outbound_proxy"),
    ({"allowed_ips": ["10.0.0.0/8", "not-an-ip"]}, "allowed_ips[1]"),
    ({"sip_dial_prefix": "9a"}, "sip_dial_prefix"),
    ({"auth_type": "token"}, "auth_type"),
    ({"auth_type": "basic"}, "sip_username"),
    ({"register": True}, "sip_username"),
    ({"sip_username": "bob"}, "sip_password"),
    ({"sip_username": "bob@example.com", "sip_password": "x"}, "sip_username"),
])
def test_shape_errors_name_the_field(kw, field):
    with pytest.raises(PresetError) as e:
        apply_preset(base(**kw))
    assert e.value.field == field


def test_secret_never_in_error():
    with pytest.raises(PresetError) as e:
        apply_preset(base(sip_username="a b", sip_password="hunter2"))
    assert "hunter2" not in str(e.value)


def test_allowed_ips_normalised():
    out = apply_preset(base(allowed_ips="10.1.2.3, 192.168.0.0/16"))
    assert out["allowed_ips"] == ["10.1.2.3/32", "192.168.0.0/16"]


def test_parse_hostport():
    assert parse_hostport("sip60.ringcentral.com:5090", "x") == ("sip60.ringcentral.com", 5090)
    assert parse_hostport("sip:proxy.example.com", "x") == ("proxy.example.com", 5060)
    assert parse_hostport("[::1]:5070", "x") == ("::1", 5070)


def test_every_preset_listed():
    assert set(PRESETS) == {"twilio", "ringcentral", "vonage", "other"}
