"""The typed config tree: YAML + dotted overrides, key/type checks, validation before any work,
configs/*.yaml."""

from __future__ import annotations

import glob
import os

import pytest
import yaml
from train_fixtures import REPO, tiny_config_text, write_split

from training.config import (
    ConfigError,
    TrainConfig,
    config_from_yaml_text,
    load_config,
    save_config,
    to_dict,
    validate_config,
)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("cfgdata"))
    items = [("red", "blue", i) for i in range(4)]
    write_split(root, "train", items, shard_size=4)
    write_split(root, "val", items, shard_size=4)
    return root


def _cfg(root: str, out: str = "/tmp/unused-run", overrides: list[str] | None = None) -> TrainConfig:
    return config_from_yaml_text(tiny_config_text(root, out), overrides)


def test_defaults_are_the_official_hyperparameters():
    cfg = load_config(None)
    assert (cfg.optim.lr, cfg.optim.coef_lr, cfg.optim.weight_decay, cfg.optim.warmup) == (
        1e-4,
        1e-3,
        0.2,
        0.1,
    )
    assert cfg.optim.betas == [0.9, 0.98] and cfg.optim.eps == 1e-6
    assert cfg.data.batch_size == 128 and cfg.bank.prefill_batches == 15
    assert cfg.bank.resolved_capacity(cfg.data.batch_size) == 1920
    assert (cfg.loss.num_neighbors, cfg.loss.temperature, cfg.loss.beta, cfg.loss.centrality_scale) == (
        20,
        3.0,
        0.7,
        0.3,
    )
    assert cfg.eval.select_metric == "val/mean_R@1"


def test_overrides_are_typed_and_nested(tiny_root):
    cfg = _cfg(
        tiny_root,
        overrides=[
            "optim.lr=3e-4",
            "run.out=runs/x",
            "optim.epochs=7",
            "run.tensorboard=true",
            "eval.ks=[1,10]",
            "bank.capacity=null",
            "model.max_words=16",
        ],
    )
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.run.out == "runs/x" and cfg.optim.epochs == 7 and cfg.run.tensorboard is True
    assert cfg.eval.ks == [1, 10] and cfg.bank.capacity is None and cfg.model.max_words == 16


def test_yaml11_exponent_strings_become_floats():
    cfg = config_from_yaml_text("optim:\n  lr: 1e-4\n  coef_lr: 5e-2\n")
    assert cfg.optim.lr == pytest.approx(1e-4) and cfg.optim.coef_lr == pytest.approx(5e-2)


@pytest.mark.parametrize(
    "overrides, text, expected",
    [
        (["optim.lrr=1"], None, "unknown config key 'optim.lrr' (did you mean 'optim.lr'"),
        (["optimm.lr=1"], None, "unknown config key 'optimm' (did you mean 'optim'"),
        (None, "model:\n  archh: nr-tiny\n", "unknown config key 'model.archh' (did you mean 'model.arch'"),
        (
            ["data.storage.endpoit_url=http://x"],
            None,
            "'data.storage.endpoit_url' (did you mean 'data.storage.endpoint_url'",
        ),
        (["optim.epochs=two"], None, "optim.epochs: Value 'two' of type 'str' could not be converted to Integer"),
        (["optim.epochs=2.5"], None, "optim.epochs: Value '2.5' of type 'float' could not be converted to Integer"),
        (["run.tensorboard=maybe"], None, "run.tensorboard: Value 'maybe' is not a valid bool"),
        (["optim.lr=fast"], None, "optim.lr: Value 'fast' of type 'str' could not be converted to Float"),
        (["eval.ks=5"], None, "eval.ks: Invalid value assigned: AnyNode is not a ListConfig"),
        (["data=3"], None, "data: expected a mapping of data keys, got 3"),
        (None, "model: 3\n", "model: expected a mapping of model keys, got 3 (<yaml>)"),
        (["optim.lr"], None, "override 'optim.lr' is not of the form section.key=value"),
        (["loss.kind=triplet"], None, "LossConfig.kind='triplet'"),
        (
            ["run.mixed_precision=yes"],
            None,
            "run.mixed_precision: expected a string, got bool True (YAML reads",
        ),
        (["model.max_frames=0"], None, "model.max_frames must be >= 1"),
    ],
)
def test_bad_keys_and_types_are_named(overrides, text, expected):
    with pytest.raises(ConfigError) as err:
        config_from_yaml_text(text or "{}", overrides)
    assert expected in str(err.value)


def test_unquoted_no_means_no_mixed_precision():
    # YAML 1.1 reads `no` as False; for this one field it can only mean the string "no"
    assert config_from_yaml_text("run: {mixed_precision: no}").run.mixed_precision == "no"
    assert config_from_yaml_text("{}", ["run.mixed_precision=no"]).run.mixed_precision == "no"


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config_from_yaml_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize(
    "overrides, world, expected",
    [
        (["loss.num_neighbors=6"], 1, "num_neighbors=6: must be <= global batch - 3 = 5"),
        (["loss.num_neighbors=8"], 1, "num_neighbors"),
        ([], 3, "data.batch_size: global batch 8 is not divisible by the world size 3"),
        (["optim.lr=-1e-4"], 1, "optim.lr: must be a positive number, got -0.0001"),
        (["optim.coef_lr=0"], 1, "optim.coef_lr: must be a positive number"),
        (["optim.weight_decay=-0.1"], 1, "optim.weight_decay: must be >= 0"),
        (["optim.warmup=1.5"], 1, "optim.warmup: must be in [0, 1)"),
        (["optim.epochs=0"], 1, "optim.epochs: must be >= 1"),
        (["optim.grad_accum=0"], 1, "optim.grad_accum: must be >= 1"),
        (["optim.betas=[0.9]"], 1, "optim.betas: must be two numbers"),
        (["data.batch_size=0"], 1, "data.batch_size: must be > 0"),
        (["data.caption_mode=some"], 1, "data.caption_mode: 'some' not in"),
        (["data.frames=uint16"], 1, "data.frames: 'uint16' not in ['auto', 'float', 'uint8']"),
        (["data.convert_in=gpu"], 1, "data.convert_in: 'gpu' not in ['auto', 'main', 'worker']"),
        (["run.mixed_precision=fp8"], 1, "run.mixed_precision: 'fp8' not in"),
        (["bank.prefill_batches=0"], 1, "bank.capacity: the bank is enabled but has no size"),
        (
            ["eval.select_metric=test/mean_R@1"],
            1,
            "eval.select_metric: 'test/mean_R@1' must be a key of the evaluated split",
        ),
        (
            ["eval.split=test", "eval.select_metric=test/mean_R@1", "data.test=null"],
            1,
            "data.test: validation is enabled",
        ),
        (["run.keep_last=0"], 1, "run.keep_last: must be >= 1"),
        (["eval.similarity=cosine"], 1, "eval.similarity: 'cosine' not in ['auto', 'local', 'pooled']"),
    ],
)
def test_impossible_values_fail_validation(tiny_root, overrides, world, expected):
    cfg = _cfg(tiny_root, overrides=overrides)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, world_size=world)
    assert expected in str(err.value)


def test_frame_output_follows_data_frames(tiny_root):
    import torch

    from training.config import frame_output, loader_config

    assert frame_output("auto") == ("uint8" if torch.cuda.is_available() else "float")
    assert frame_output("uint8") == "uint8" and frame_output("float") == "float"
    cfg = _cfg(tiny_root, overrides=["data.frames=uint8"])
    lcfg = loader_config(cfg, cfg.data.train, purpose="train", world_size=1)
    assert (lcfg.output, lcfg.convert_in) == ("uint8", "worker")  # auto: uint8 batches are made by the workers
    cfg = _cfg(tiny_root, overrides=["data.frames=float"])
    lcfg = loader_config(cfg, cfg.data.train, purpose="train", world_size=1)
    assert (lcfg.output, lcfg.convert_in) == ("float", "main")


def test_fp16_needs_cuda(tiny_root):
    cfg = _cfg(tiny_root, overrides=["run.mixed_precision=fp16"])
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        validate_config(cfg, cuda_available=False)
    validate_config(cfg, cuda_available=True)  # fine on a GPU machine


def test_missing_shards_are_named(tiny_root, tmp_path):
    cfg = _cfg(tiny_root)
    validate_config(cfg, world_size=2)  # the fixture splits exist
    bad = _cfg(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as err:
        validate_config(bad)
    nowhere = tmp_path / "nowhere"
    assert f"data.train: no shards at {nowhere}/train (missing {nowhere}/train/sizes.json" in str(err.value)
    only_val_missing = _cfg(tiny_root, overrides=["data.val=validation"])
    with pytest.raises(ConfigError, match=r"data\.val: no shards at .*/validation"):
        validate_config(only_val_missing)
    validate_config(_cfg(tiny_root, overrides=["data.val=validation", "eval.at_epoch_end=false"]))


def test_several_problems_are_reported_together(tiny_root):
    cfg = _cfg(tiny_root, overrides=["optim.lr=-1", "optim.epochs=0"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert "optim.lr" in str(err.value) and "optim.epochs" in str(err.value)


def test_cli_rejects_bad_config_before_any_work(tiny_root, tmp_path, capsys):
    from training.train import main

    path = tmp_path / "c.yaml"
    out = tmp_path / "run"
    path.write_text(tiny_config_text(tiny_root, str(out)))
    assert main(["--config", str(path), "loss.num_neighbors=7"]) == 2
    assert "num_neighbors=7: must be <= global batch - 3 = 5" in capsys.readouterr().err
    assert not out.exists()  # nothing was created
    assert main(["--config", str(path), "optim.lrr=1"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err
    assert main(["--config", str(path), "--check"]) == 2  # the tiny split holds 4 samples, the batch is 8
    assert "global batch 8 exceeds the 4 samples of" in capsys.readouterr().err
    assert main(["--config", str(path), "--check", "data.batch_size=4", "loss.num_neighbors=1"]) == 0
    assert not out.exists()


def test_save_and_reload_round_trip(tiny_root, tmp_path):
    cfg = _cfg(
        tiny_root, overrides=["optim.lr=3e-4", "loss.kind=infonce", "data.storage.endpoint_url=http://h:1"]
    )
    save_config(cfg, str(tmp_path / "config.yaml"))
    again = load_config(str(tmp_path / "config.yaml"))
    assert to_dict(again) == to_dict(cfg)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["optim"]["lr"] == pytest.approx(3e-4)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))))
def test_shipped_configs_load_and_validate(path):
    cfg = load_config(path)
    world = 1 if "demo" in path else 8
    validate_config(cfg, world_size=world, check_shards=False)
    if "demo" not in path:  # reference hyperparameters (docs/method.md §5)
        assert (cfg.optim.lr, cfg.optim.coef_lr, cfg.optim.weight_decay, cfg.optim.warmup) == (
            1e-4,
            1e-3,
            0.2,
            0.1,
        )
        assert cfg.data.batch_size == 128 and cfg.loss.num_neighbors == 20 and cfg.model.temporal_layers == 4
        assert cfg.bank.resolved_capacity(cfg.data.batch_size) == 1920


def test_all_dataset_configs_exist():
    names = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "configs", "*.yaml"))}
    assert {"demo.yaml", "msrvtt.yaml", "msvd.yaml", "didemo.yaml", "activitynet.yaml"} <= names


def test_accelerate_config_parses_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(os.path.join(REPO, "accelerate_config.yaml"))
    assert cfg.distributed_type == "MULTI_GPU" and cfg.num_processes == 8 and cfg.mixed_precision == "bf16"
    assert cfg.num_machines == 1 and cfg.machine_rank == 0 and cfg.main_process_port == 29500
    assert cfg.rdzv_backend == "static"
