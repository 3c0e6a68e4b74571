from __future__ import annotations

from pathlib import Path

import pytest

from gridwatch.cli import main
from gridwatch.config import load_settings, mask_url, parse_partition
from gridwatch.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("GRIDWATCH_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults_need_nothing() -> None:
    s = load_settings()
    assert s.mqtt.url is None
    assert s.storage.url.startswith("sqlite:///")
    assert s.pipeline.workers == 1


def test_file_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[sim]\ndevices = 100\nspeed = 2.0\n[storage]\nurl = "sqlite:///x.db"\n')
    assert load_settings(cfg).sim.devices == 100
    monkeypatch.setenv("GRIDWATCH_SIM__DEVICES", "200")
    s = load_settings(cfg)
    assert (s.sim.devices, s.sim.speed, s.storage.url) == (200, 2.0, "sqlite:///x.db")
    s = load_settings(cfg, sim={"devices": 300})
    assert (s.sim.devices, s.sim.speed) == (300, 2.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[storage]\nurl = "mysql://x"\n',
            r"storage.url = 'mysql://x': .*sqlite:/// or postgresql://",
        ),
        ("[pipeline]\nworkers = 0\n", r"pipeline.workers = 0: .*greater than or equal to 1"),
        ('[pipeline]\npartition = "3/2"\n', r"pipeline.partition = '3/2': .*k/N"),
        ('[mqtt]\nurl = "http://x"\n', r"mqtt.url = 'http://x': .*mqtt://host"),
        ("[mqtt]\nqos = 2\n", r"mqtt.qos = 2"),
        ("[sim]\nbogus = 1\n", r"sim.bogus: unknown setting"),
        ("[sim\n", r"not valid TOML"),
    ],
)
def test_mistakes_name_file_key_and_value(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_settings(cfg)
    assert str(cfg) in str(err.value)


def test_secrets_are_masked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        '[mqtt]\npassword = "topsecret"\n[storage]\nurl = "postgresql://gw:hunter2@db/test"\n'
    )
    s = load_settings(cfg)
    assert "topsecret" not in repr(s)
    assert main(["config", "show", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "topsecret" not in out and "hunter2" not in out
    assert "postgresql://gw:***@db/test" in out


def test_helpers() -> None:
    assert mask_url("postgresql://u:p@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert mask_url("sqlite:///a.db") == "sqlite:///a.db"
    assert parse_partition("1/3") == (1, 3)
    assert parse_partition(None) is None
    with pytest.raises(ConfigError):
        parse_partition("x")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_pipeline_settings_from_env_and_their_bounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRIDWATCH_MQTT__QOS", "0")  # environment values arrive as text
    monkeypatch.setenv("GRIDWATCH_PIPELINE__CHECKPOINT_INTERVAL_S", "2")
    monkeypatch.setenv("GRIDWATCH_SIM__DEMO_FAULTS", "false")
    s = load_settings()
    assert (s.mqtt.qos, s.pipeline.checkpoint_interval_s, s.sim.demo_faults) == (0, 2.0, False)
    assert s.pipeline.delay_storage_after_rows is None  # auto: by storage backend
    monkeypatch.delenv("GRIDWATCH_PIPELINE__CHECKPOINT_INTERVAL_S")  # env outranks the file
    cfg = tmp_path / "gw.toml"
    cfg.write_text("[pipeline]\ncheckpoint_interval_s = 0\n")
    with pytest.raises(ConfigError, match=r"pipeline.checkpoint_interval_s = 0: .*greater than 0"):
        load_settings(cfg)
    cfg.write_text("[pipeline]\nmetrics_port = 70000\n")
    with pytest.raises(ConfigError, match=r"pipeline.metrics_port = 70000"):
        load_settings(cfg)


def test_mqtt_protocol_defaults_to_311_and_reaches_the_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gridwatch.pipeline.worker import MQTT311_FLUSH_MESSAGES, _flush_messages
    from ingest.config import IngestConfig

    assert load_settings().mqtt.protocol == "3.1.1"
    monkeypatch.setenv("GRIDWATCH_MQTT__PROTOCOL", "5")
    assert load_settings().mqtt.protocol == "5"
    monkeypatch.delenv("GRIDWATCH_MQTT__PROTOCOL")
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[mqtt]\nurl = "mqtt://127.0.0.1:1883"\nprotocol = 5\n')  # a TOML number
    s = load_settings(cfg)
    assert s.mqtt.protocol == "5"
    assert _flush_messages(s) == IngestConfig().flush_messages  # Receive Maximum 20,000
    cfg.write_text('[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n')
    assert _flush_messages(load_settings(cfg)) == MQTT311_FLUSH_MESSAGES  # broker window
    cfg.write_text('[mqtt]\nprotocol = "4"\n')
    with pytest.raises(ConfigError, match=r"mqtt.protocol"):
        load_settings(cfg)
