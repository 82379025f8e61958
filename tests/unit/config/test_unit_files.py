"""Vendor folder, /etc overrides, drop-ins, templates (config/layout) and the enable/disable/mask marks
(config/unitstate), on real files in a temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from hasupd.config.issues import ConfigError
from hasupd.config.layout import find_services
from hasupd.config.load import load_config
from hasupd.config.unitstate import UnitFileState, UnitStates, UnreadableState, is_unit_name
from hasupd.daemon import Options, read_config


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    vendor, etc = tmp_path / "vendor", tmp_path / "etc"
    (etc / "services.d").mkdir(parents=True)
    (vendor / "services.d").mkdir(parents=True)
    return etc, vendor


def test_etc_hides_the_vendor_file_and_dropins_merge_in_name_order(dirs: tuple[Path, Path]) -> None:
    etc, vendor = dirs
    _write(vendor / "services.d" / "web.yaml", "command: [/bin/sleep, '1']\ndescription: vendor\n")
    _write(etc / "services.d" / "web.yaml", "command: [/bin/sleep, '2']\nenvironment: {A: a}\n")
    _write(vendor / "services.d" / "web.d" / "10-env.yaml", "environment: {B: vendor}\nrestart_sec: 1s\n")
    _write(vendor / "services.d" / "web.d" / "20-env.yaml", "environment: {C: vendor}\n")
    _write(etc / "services.d" / "web.d" / "20-env.yaml", "environment: {B: etc}\n")  # hides the vendor's 20
    _write(etc / "services.d" / "web.d" / "30-health.yaml", "health: [{tcp: '127.0.0.1:1'}]\n")
    _write(etc / "services.d" / "web.d" / "40-health.yaml", "health: [{tcp: '127.0.0.1:2'}]\n")
    _write(etc / "services.d" / "web.d" / "notes.txt", "not a drop-in\n")
    web = load_config(etc, vendor_dir=vendor).services[0]
    assert web.command == ("/bin/sleep", "2")
    assert web.description == ""  # the vendor file is hidden whole, not merged
    assert web.environment == (("A", "a"), ("B", "etc"))  # mappings merge key by key, the later wins
    assert web.restart_sec == 1.0
    assert [p.target for p in web.health] == ["127.0.0.1:2"]  # a list is replaced, not appended to
    sources = find_services([vendor / "services.d", etc / "services.d"])[0]
    assert sources.hidden == (vendor / "services.d" / "web.yaml",)
    assert [p.name for p in sources.dropins] == [
        "10-env.yaml",
        "20-env.yaml",
        "30-health.yaml",
        "40-health.yaml",
    ]
    assert sources.dropins[1].parent.parent.parent == etc


def test_errors_in_a_dropin_name_the_dropin(dirs: tuple[Path, Path]) -> None:
    etc, vendor = dirs
    _write(vendor / "services.d" / "web.yaml", "command: [/bin/true]\n")
    bad = _write(etc / "services.d" / "web.d" / "x.yaml", "# comment\nrestart_sec: 5 parsecs\nbogus: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(etc, vendor_dir=vendor)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith(f"{bad}:2:14: restart_sec: ")
    assert lines[1].startswith(f"{bad}:3:1: bogus: unknown key 'bogus'")
    _write(etc / "services.d" / "web.d" / "x.yaml", "- a list\n")
    with pytest.raises(ConfigError, match=r"x.yaml:1:1: a drop-in must be a mapping of service keys"):
        load_config(etc, vendor_dir=vendor)


def test_templates_are_instantiated_by_link_and_by_enable(dirs: tuple[Path, Path]) -> None:
    etc, vendor = dirs
    template = _write(
        vendor / "services.d" / "app@.yaml",
        "command: [/bin/sleep, '{instance_name}']\nworking_directory: /srv/{instance_name}\n",
    )
    (etc / "services.d" / "app@7.yaml").symlink_to(template)
    _write(etc / "services.d" / "app@.d" / "all.yaml", "description: app {instance_name}\n")
    _write(etc / "services.d" / "app@9.d" / "nine.yaml", "restart_sec: 9s\n")
    config = load_config(etc, vendor_dir=vendor, instances=lambda daemon: ["app@9", "gone@1", "app@7"])
    by_name = {s.name: s for s in config.services}
    assert sorted(by_name) == ["app@7", "app@9"]  # no "app@" service; no instance of a missing template
    assert by_name["app@7"].command == ("/bin/sleep", "7")
    assert by_name["app@9"].working_directory == "/srv/9"
    assert by_name["app@9"].description == "app 9"
    assert by_name["app@9"].restart_sec == 9.0 and by_name["app@7"].restart_sec == 0.1
    # An error in the template is reported in the template, for each instance.
    _write(template, "command: [/bin/sleep, '{instance_name}']\ntype: sometimes\n")
    with pytest.raises(ConfigError) as caught:
        load_config(etc, vendor_dir=vendor, instances=lambda daemon: ["app@9"])
    assert {str(i) for i in caught.value.issues} == {
        f"{template}:2:7: type: invalid value 'sometimes': expected one of simple, notify, oneshot"
    }
    assert is_unit_name("app@9") and not is_unit_name("app@") and not is_unit_name("App@x")


def test_new_keys_are_checked_against_each_other(dirs: tuple[Path, Path]) -> None:
    etc, _ = dirs
    path = _write(
        etc / "services.d" / "t.yaml",
        "command: [/bin/true]\nschedule: '@daily'\npersistent: true\n"
        "reload_signal: SIGHUP\nreload_command: [/bin/true]\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(etc)
    assert [str(i) for i in caught.value.issues] == [
        f"{path}:2:1: schedule: a schedule needs type: oneshot (a timer runs to its end)",
        f"{path}:5:1: reload_command: reload_signal and reload_command are exclusive",
    ]
    _write(path, "command: [/bin/true]\ntype: oneshot\nrandomized_delay_sec: 5m\n")
    with pytest.raises(ConfigError, match=r"t.yaml:3:1: randomized_delay_sec: randomized_delay_sec needs"):
        load_config(etc)
    _write(path, "command: [/bin/true]\ntype: oneshot\nschedule: '*/5 * * * *'\npersistent: true\n")
    timer = load_config(etc).services[0]
    assert (timer.schedule, timer.persistent) == ("*/5 * * * *", True)


def test_unit_states_round_trip_and_refuse_a_damaged_file(tmp_path: Path) -> None:
    states = UnitStates.load(tmp_path)
    assert states.state("web") is UnitFileState.ENABLED and states.starts_at_boot("web")
    states.disabled.add("web")
    states.masked.update({"web", "db"})
    states.instances.add("app@1")
    states.save()
    again = UnitStates.load(tmp_path)
    assert again.state("web") is UnitFileState.MASKED  # masked wins
    assert again.instances == {"app@1"} and not again.starts_at_boot("db")
    (tmp_path / "units.json").write_text('{"disabled": "web"}')
    with pytest.raises(UnreadableState, match="not an object of lists of names"):
        UnitStates.load(tmp_path)
    (tmp_path / "units.json").write_bytes(b'\xff{"disabled": []}')  # not UTF-8: reported, located
    with pytest.raises(UnreadableState, match=r"units\.json: .*utf-8"):
        UnitStates.load(tmp_path)
    # The daemon takes a damaged file as a config error: it would not know what to start.
    etc = tmp_path / "etc"
    _write(etc / "services.d" / "web.yaml", "command: [/bin/true]\n")
    with pytest.raises(ConfigError, match=r"units\.json"):
        read_config(Options(config_dir=etc, state_dir=tmp_path))
    # check-config may run as a user who cannot read the state dir: it checks the rest.
    read_config(Options(config_dir=etc, state_dir=tmp_path), strict=False)


@pytest.mark.parametrize(
    "entry",
    [
        '{"instances": ["app@../../x"]}',
        '{"instances": ["web"]}',
        '{"instances": ["app@"]}',
        '{"masked": ["a@b@c"]}',
        '{"disabled": ["../web"]}',
        '{"instances": ["app@' + "x" * 300 + '"]}',  # longer than a file name can be
    ],
)
def test_a_hand_edited_name_is_reported_at_units_json(tmp_path: Path, entry: str) -> None:
    etc = tmp_path / "etc"
    _write(etc / "services.d" / "app@.yaml", "command: [/bin/true]\n")
    (tmp_path / "units.json").write_text(entry)
    with pytest.raises(UnreadableState, match="not a service or template instance name"):
        UnitStates.load(tmp_path)
    # Not an error of app@.yaml (which is fine): the daemon names the file that holds the name.
    with pytest.raises(ConfigError) as raised:
        read_config(Options(config_dir=etc, state_dir=tmp_path))
    assert [issue.file for issue in raised.value.issues] == [str(tmp_path / "units.json")]
