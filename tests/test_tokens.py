"""Device tokens (edgerec.tokens): the one parser the server, the device and the CLI share."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerec.errors import ConfigError
from edgerec.tokens import (
    MAX_TOKEN_LENGTH,
    DeviceToken,
    check_token_text,
    device_id_of,
    new_token,
    parse_token,
)

DEVICE_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}", fullmatch=True)


@given(DEVICE_IDS)
def test_an_issued_token_parses_back_to_its_device(device_id: str) -> None:
    token = new_token(device_id)
    parsed = parse_token(token)
    assert parsed is not None and parsed.device_id == device_id and len(parsed.secret) >= 43
    assert device_id_of(token) == device_id
    assert check_token_text(token) == token


@given(st.text(max_size=2 * MAX_TOKEN_LENGTH))
def test_any_text_parses_to_a_token_or_none_and_never_raises(text: str) -> None:
    parsed = parse_token(text)
    if parsed is not None:
        assert f"{parsed.device_id}.{parsed.secret}" == text
        assert "." not in parsed.secret and len(text) <= MAX_TOKEN_LENGTH
    assert device_id_of(text) == (parsed.device_id if parsed else "")


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("kiosk-17.c2VjcmV0", DeviceToken("kiosk-17", "c2VjcmV0")),
        ("shop.eu:kiosk@1.s3cr3t_-", DeviceToken("shop.eu:kiosk@1", "s3cr3t_-")),  # ids may hold dots
        ("no-dot-at-all", None),
        (".secret-without-device", None),
        ("device-without-secret.", None),
        ("-starts-badly.secret", None),
        ("device.sec ret", None),
        ("device.secret." + "x", DeviceToken("device.secret", "x")),
    ],
)
def test_the_split_is_at_the_last_dot_and_both_parts_are_checked(token: str, expected: DeviceToken | None) -> None:
    assert parse_token(token) == expected


@pytest.mark.parametrize("bad", ["", "has space", "tab\there", "non-ascii-é", "x" * (MAX_TOKEN_LENGTH + 1)])
def test_a_device_refuses_to_send_what_no_header_should_carry(bad: str) -> None:
    with pytest.raises(ConfigError, match="printable ASCII"):
        check_token_text(bad)


@pytest.mark.parametrize("bad_id", ["", "bad id with spaces", "-leading-dash", "x" * 129])
def test_issuing_a_token_checks_the_device_id(bad_id: str) -> None:
    with pytest.raises(ConfigError, match="device id"):
        new_token(bad_id)
