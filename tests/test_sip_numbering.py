"""The dial formatting table of docs/sip-trunks.md, and inbound user-part → E.164 matching."""
import pytest

from gateway.sip.numbering import (
    DialFormatError,
    DialPlan,
    called_number_candidates,
    dial_user,
    inbound_number,
    sip_uri,
    uri_user,
)

# (E.164, sip_strip_plus, sip_dial_prefix, dialled user part) — the same rows as docs/sip-trunks.md
TABLE = [
    ("+15551234567", False, "", "+15551234567"),
    ("+15551234567", True, "", "15551234567"),
    ("+15551234567", True, "9", "915551234567"),
    ("+15551234567", False, "9", "9+15551234567"),
    ("+442071838750", True, "00", "00442071838750"),
    ("+442071838750", True, "011", "011442071838750"),
    ("+919876543210", True, "0", "0919876543210"),
    ("+15551234567", True, "*67", "*6715551234567"),
    ("+15551234567", False, "*67", "*67+15551234567"),
]


@pytest.mark.parametrize("e164,strip,prefix,expected", TABLE)
def test_dial_table(e164, strip, prefix, expected):
    assert dial_user(e164, strip_plus=strip, dial_prefix=prefix) == expected
    assert DialPlan(strip, prefix).user_part(e164) == expected


def test_dial_plan_from_config_defaults():
    assert DialPlan.from_config({}).user_part("+15551234567") == "+15551234567"
    assert DialPlan.from_config({"sip_strip_plus": True, "sip_dial_prefix": None}).user_part(
        "+15551234567") == "15551234567"


@pytest.mark.parametrize("bad", ["15551234567", "+0123", "", "+1555abc4567"])
def test_dial_rejects_non_e164(bad):
    with pytest.raises(DialFormatError):
        dial_user(bad)


@pytest.mark.parametrize("prefix", ["9 ", "x", "9@", "1" * 17])
def test_bad_prefix(prefix):
    with pytest.raises(DialFormatError):
        DialPlan(True, prefix)


def test_sip_uri():
    assert sip_uri("915551234567", "trunk.example.com") == "sip:915551234567@trunk.example.com"
    assert sip_uri("+15551234567", "1.2.3.4", 5080, transport="tcp") == "sip:+15551234567@1.2.3.4:5080;transport=tcp"
    assert sip_uri("100", "::1", 5060) == "sip:100@[::1]:5060"
    with pytest.raises(DialFormatError):
        sip_uri("a b", "h")


@pytest.mark.parametrize("uri,user", [
    ("sip:+15551234567@gw.example.com", "+15551234567"),
    ("<sip:15551234567@gw.example.com:5060;transport=udp>", "15551234567"),
    ("sips:alice:secret@example.com", "alice"),
    ("tel:+15551234567;phone-context=x", "+15551234567"),
    ("sip:%2B15551234567@h", "+15551234567"),
    ("sip:gw.example.com", ""),
    ('"Bob" <sip:+15551234567@gw>;tag=1', "+15551234567"),
    ("http://x", ""),
])
def test_uri_user(uri, user):
    assert uri_user(uri) == user


@pytest.mark.parametrize("user,expected", [
    ("+15551234567", "+15551234567"),
    ("15551234567", "+15551234567"),
    ("0015551234567", "+15551234567"),
    ("+1 (555) 123-4567", "+15551234567"),
    ("alice", None),
    ("anonymous", None),
    ("", None),
])
def test_inbound_number(user, expected):
    assert inbound_number(user) == expected


def test_inbound_number_strips_trunk_prefix():
    assert inbound_number("915551234567", dial_prefix="9") == "+15551234567"


def test_called_number_candidates_order():
    assert called_number_candidates("sip:+15550001111@gw", "<sip:+15550002222@gw>") == ["+15550001111",
                                                                                         "+15550002222"]
    assert called_number_candidates("sip:gw.example.com", "<sip:15550002222@gw>") == ["+15550002222"]
