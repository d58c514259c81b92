import hashlib

import pytest

from syncer.deviceid import ALPHABET, DeviceId, luhn32
from syncer.errors import InvalidDeviceId

EXAMPLE = "MFZWI3D-BONSGYC-YLTMRWG-C43ENR5-QXGZDMM-FZWI3DP-BONSGYY-LTMRWAD"


def test_syncthing_documentation_example_validates_and_round_trips():
    assert str(DeviceId.parse(EXAMPLE)) == EXAMPLE


@pytest.mark.parametrize(
    "variant",
    [EXAMPLE.lower(), EXAMPLE.replace("-", ""), EXAMPLE.replace("-", " "), "  " + EXAMPLE + "\n"],
)
def test_parser_tolerates_case_dashes_and_spaces(variant):
    assert DeviceId.parse(variant) == DeviceId.parse(EXAMPLE)


def test_changing_any_character_is_rejected():
    positions = [i for i, c in enumerate(EXAMPLE) if c != "-"]
    assert len(positions) == 56
    for i in positions:
        for repl in ALPHABET + "0189":
            if repl == EXAMPLE[i]:
                continue
            bad = EXAMPLE[:i] + repl + EXAMPLE[i + 1 :]
            with pytest.raises(InvalidDeviceId):
                DeviceId.parse(bad)


@pytest.mark.parametrize("bad", ["", "ABC", EXAMPLE + "A", EXAMPLE[:-1], "!" * 56])
def test_malformed_ids_are_rejected(bad):
    with pytest.raises(InvalidDeviceId):
        DeviceId.parse(bad)


def test_from_certificate_is_sha256_of_der_and_formats_in_8_groups_of_7():
    der = b"not really a certificate"
    dev = DeviceId.from_cert_der(der)
    assert dev.raw == hashlib.sha256(der).digest()
    text = str(dev)
    groups = text.split("-")
    assert len(groups) == 8 and all(len(g) == 7 for g in groups)
    assert DeviceId.parse(text) == dev
    assert dev.short == text[:7]


def test_luhn32_known_value():
    # first group of the documentation example: 13 data characters + check character 'C'
    assert luhn32("MFZWI3DBONSGY") == "C"
