"""Config: defaults, validation errors naming the key path and value, and the example file in step."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from llmserve.config import Config, ServerConfig, UIConfig, WorkerConfig, load_config, parse_config
from llmserve.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _parse(server: dict | None = None, worker: dict | None = None, **extra) -> Config:
    data = {"server": server or {}, "workers": [{"model_path": "m", **(worker or {})}], **extra}
    return parse_config(data)


def test_defaults_are_safe() -> None:
    config = _parse()
    assert config.server.host == "127.0.0.1" and config.server.port == 8000
    assert config.server.api_keys == () and config.server.allowed_origins == ()
    assert config.server.dispatch == "shortest_queue"
    assert config.workers[0].served_names == ("m",)
    assert config.workers[0].trust_remote_code is False and config.workers[0].allow_pickle is False


@pytest.mark.parametrize(("server", "worker", "message"), [
    ({"port": 70000}, {}, "server.port = 70000: expected 1..65535"),
    ({"dispatch": "random"}, {}, 'server.dispatch = "random"'),
    ({"api_keys": ["short"]}, {}, "server.api_keys[0]"),
    ({"port": "80"}, {}, 'server.port = "80": expected an integer'),
    ({"hots": "x"}, {}, "server.hots: unknown key"),
    ({}, {"device": "gpu"}, 'workers[0].device = "gpu": expected "cpu", "cuda", "cuda:N" or "mps"'),
    ({}, {"dtype": "int3"}, 'workers[0].dtype = "int3"'),
    ({}, {"speed": 0}, "workers[0].speed = 0.0: expected a positive number"),
    ({}, {"max_num_seqs": 0}, "workers[0].max_num_seqs = 0"),
    ({}, {"block_size": 12}, "workers[0].block_size = 12"),
    ({}, {"gpu_memory_utilization": 1.5}, "workers[0].gpu_memory_utilization = 1.5"),
    ({}, {"model_path": ""}, "workers[0].model_path"),
    ({}, {"trust_remote_code": "yes"}, 'workers[0].trust_remote_code = "yes": expected true or false'),
    ({}, {"model_names": [""]}, "workers[0].model_names[0]"),
    ({}, {"stream_interval": 0}, "workers[0].stream_interval = 0"),
    ({}, {"engine_path": "fastest"}, 'workers[0].engine_path = "fastest": expected one of auto, fast, generic'),
])
def test_errors_name_the_key_and_value(server: dict, worker: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _parse(server, worker)
    assert message in str(err.value)


def test_second_worker_is_named_by_index() -> None:
    with pytest.raises(ConfigError, match=r"workers\[1\]\.device"):
        parse_config({"workers": [{"model_path": "a"}, {"model_path": "b", "device": "tpu"}]})


def test_no_workers_is_an_error() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        parse_config({})


def test_unknown_table_is_an_error() -> None:
    with pytest.raises(ConfigError, match="sever: unknown key"):
        parse_config({"sever": {}, "workers": [{"model_path": "m"}]})


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def _documented_defaults(cls: type) -> dict:
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            for f in dataclasses.fields(cls)}


def test_example_config_mirrors_every_field_with_its_default() -> None:
    data = tomllib.loads((ROOT / "config.example.toml").read_text())
    load_config(ROOT / "config.example.toml")  # parses and validates
    for section, cls in (("server", ServerConfig), ("ui", UIConfig)):
        assert data[section].keys() == _documented_defaults(cls).keys()
        for key, default in _documented_defaults(cls).items():
            value = data[section][key]
            assert (tuple(value) if isinstance(value, list) else value) == default, f"{section}.{key}"
    worker = data["workers"][0]
    defaults = _documented_defaults(WorkerConfig)
    assert worker.keys() == defaults.keys()
    for key, default in defaults.items():
        if key not in ("model_path", "model_names"):
            assert (tuple(worker[key]) if isinstance(worker[key], list) else worker[key]) == default, key


def test_api_keys_file_adds_its_keys_and_an_unreadable_or_empty_one_is_refused(tmp_path) -> None:
    WORKER = [{"model_path": "m"}]  # noqa: N806
    keys = tmp_path / "api-keys"
    keys.write_text("# from a Kubernetes Secret\nsk-from-file-0001\n\n  sk-from-file-0002  \n")
    server = parse_config({"server": {"api_keys": ["sk-inline-0000"], "api_keys_file": str(keys)}, "workers": WORKER}).server
    assert server.api_keys == ("sk-inline-0000", "sk-from-file-0001", "sk-from-file-0002")
    keys.write_text("short\n")
    with pytest.raises(ConfigError, match=r"server.api_keys\[0\]"):
        parse_config({"server": {"api_keys_file": str(keys)}, "workers": WORKER})
    keys.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no keys in it"):
        parse_config({"server": {"api_keys_file": str(keys)}, "workers": WORKER})
    with pytest.raises(ConfigError, match="cannot read it"):
        parse_config({"server": {"api_keys_file": str(tmp_path / "missing")}, "workers": WORKER})
