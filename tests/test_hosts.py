"""Hostfile validation: both syntaxes parse; every error names FILE:LINE."""

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from horn.errors import HornError
from horn.hosts import check_hostfile
from tests.mpirun import REPO


def write(tmp_path, text, name="hosts"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_open_mpi_syntax_with_comments_and_defaults(tmp_path):
    path = write(
        tmp_path,
        "# cluster\n\nnode1 slots=4\nnode2   slots = 2 max_slots=8  # big\n"
        "10.0.0.7\nlocalhost slots=1\r\n",
    )
    assert check_hostfile(path) == (
        [("node1", 4), ("node2", 2), ("10.0.0.7", 1), ("localhost", 1)],
        8,
    )


def test_mpich_syntax(tmp_path):
    path = write(tmp_path, "node-a.example.org:4\nnode-b:2 # comment\nnode-c\n")
    assert check_hostfile(path) == ([("node-a.example.org", 4), ("node-b", 2), ("node-c", 1)], 7)


def test_shipped_example_is_valid():
    hosts, total = check_hostfile(REPO / "hostfile.example")
    assert hosts and total == sum(slots for _, slots in hosts)


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("node1 slots=4\nnode_2 slots=2\n", 2, "invalid host name 'node_2'"),
        ("-node slots=1\n", 1, "invalid host name '-node'"),
        ("a..b\n", 1, "invalid host name 'a..b'"),
        ("node1\n" + "x" * 64 + "\n", 2, "invalid host name"),
        ("10.0.0.256 slots=2\n", 1, "invalid IPv4 address '10.0.0.256'"),
        (
            "# c\nnode1 slots=0\n",
            2,
            "slots must be a positive integer (at most 1000000), found '0'",
        ),
        ("node1 slots=-3\n", 1, "found '-3'"),
        ("node1 slots=2.5\n", 1, "found '2.5'"),
        ("node1 slots=four\n", 1, "found 'four'"),
        ("node1:x\n", 1, "slots (after ':') must be a positive integer"),
        ("node1:0\n", 1, "found '0'"),
        ("node1 slots=2 max_slots=1\n", 1, "max_slots=1 is less than slots=2"),
        (
            "node1 slots=1\n\nnode2\nNODE1 slots=2\n",
            4,
            "duplicate host 'NODE1' (first listed on line 1)",
        ),
        (
            "node1 slot=4\n",
            1,
            "unknown key 'slot' (did you mean 'slots'?) (expected one of: slots, max_slots)",
        ),
        ("node1 maxslots=4\n", 1, "(did you mean 'max_slots'?)"),
        ("node1 colour=red\n", 1, "unknown key 'colour' (expected one of: slots, max_slots)"),
        ("node1 4\n", 1, "expected KEY=VALUE such as slots=4 after host 'node1', found '4'"),
        ("node1 slots=1 slots=2\n", 1, "key 'slots' given twice"),
        ("node1:4 slots=2\n", 1, "found both"),
    ],
)
def test_errors_name_file_line_expected_and_found(tmp_path, text, line, fragment):
    path = write(tmp_path, text, "my.hosts")
    with pytest.raises(HornError) as info:
        check_hostfile(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert fragment in message
    assert "\n" not in message


def test_unknown_key_without_close_match_has_no_guess(tmp_path):
    with pytest.raises(HornError) as info:
        check_hostfile(write(tmp_path, "node1 colour=red\n"))
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   # another\n"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(HornError, match=re.escape(f"{path}: no hosts found")):
        check_hostfile(path)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(HornError, match="cannot read hostfile"):
        check_hostfile(tmp_path / "nope")
    path = tmp_path / "bin"
    path.write_bytes(b"node1\nnode2 \xff\n")
    with pytest.raises(
        HornError, match=re.escape(f"{path}:2: expected UTF-8 text, found byte 0xff")
    ):
        check_hostfile(path)


PIECES = st.sampled_from(
    [
        "node1",
        "node2",
        "NODE1",
        "10.0.0.1",
        "999.1.1.1",
        "a..b",
        "-x",
        "x" * 70,
        "slots",
        "max_slots",
        "slot",
        "=",
        "==",
        ":",
        "4",
        "0",
        "-1",
        "2.5",
        "1e3",
        "99999999",
        " ",
        "\t",
        "\n",
        "\r\n",
        "#",
        "\x00",
        "\u00e9",
        "\u0663",
        "\u2028",
        "\x0b",
        "\x85",
    ]
)
HOSTFILE_TEXT = st.one_of(st.text(), st.lists(PIECES, max_size=40).map("".join))


@settings(
    max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.one_of(HOSTFILE_TEXT.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary()))
def test_fuzz_only_horn_errors(tmp_path, data):
    path = tmp_path / "fuzz.hosts"
    path.write_bytes(data)
    try:
        hosts, total = check_hostfile(path)
    except HornError as exc:
        assert str(exc).startswith(str(path)), exc
        return
    assert (
        hosts
        and total == sum(slots for _, slots in hosts)
        and all(slots >= 1 for _, slots in hosts)
    )
