"""hasupd.host.users: a user or group by name or by number, the same for the validator and the spawners."""

from __future__ import annotations

import grp
import os
import pwd

import pytest

from hasupd.config.model import ServiceConfig
from hasupd.host.users import UnknownIdentity, lookup_group, lookup_user
from hasupd.ports import SpawnError
from hasupd.runtimes.engines import user_option

NOBODY = pwd.getpwuid(65534)


def test_a_user_by_name_and_by_number_is_the_same_entry() -> None:
    assert lookup_user("65534") == lookup_user(NOBODY.pw_name)
    assert lookup_user("0").name == "root"
    assert lookup_group("0") == 0 == lookup_group(grp.getgrgid(0).gr_name)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("no-such-user-hasupd", "unknown user 'no-such-user-hasupd'"),
        ("4294967294", "no user has uid 4294967294"),
        ("4294967295", "invalid user id 4294967295: ids go from 0 to 4294967294"),
        ("9" * 5000, "invalid user id " + "9" * 5000),
        ("a\0b", "invalid user name 'a\\x00b'"),
        ("\ud800", "invalid user name '\\ud800': not valid text"),
        ("", "invalid user name ''"),
        ("²", "unknown user '²'"),  # not ASCII digits: a name
    ],
)
def test_what_names_no_user_is_an_error_never_another_exception(value: str, message: str) -> None:
    with pytest.raises(UnknownIdentity) as info:
        lookup_user(value)
    assert str(info.value).startswith(message)


def test_a_numeric_group_that_nobody_has_is_an_error() -> None:
    with pytest.raises(UnknownIdentity, match="no group has gid 4294967294"):
        lookup_group("4294967294")


def test_container_user_option_takes_numbers() -> None:
    option = user_option(ServiceConfig(name="x", user="65534"))
    assert option == ["--user", f"65534:{NOBODY.pw_gid}"]
    assert user_option(ServiceConfig(name="x", group="0")) == ["--user", f"{os.geteuid()}:0"]
    with pytest.raises(SpawnError, match="user '4294967294' does not exist"):
        user_option(ServiceConfig(name="x", user="4294967294"))
