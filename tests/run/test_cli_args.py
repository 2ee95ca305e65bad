"""The shared argument groups: value types, the two spellings of a folder flag, the Ray group."""

from __future__ import annotations

import argparse

import pytest

from platonic.data.levels import ALL_LEVELS
from platonic.run import cli_args
from platonic.run.cli_args import RaySettings, ray_settings


def _parse(build, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    build(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("convert, text, expected", [
    (cli_args.positive_int, "3", 3), (cli_args.non_negative_int, "0", 0),
    (cli_args.positive_float, "0.5", 0.5), (cli_args.topk_value, "None", None),
    (cli_args.topk_value, "7", 7)])
def test_value_types_accept(convert, text, expected):
    assert convert(text) == expected


@pytest.mark.parametrize("convert, text", [
    (cli_args.positive_int, "0"), (cli_args.non_negative_int, "-1"),
    (cli_args.positive_float, "0"), (cli_args.topk_value, "ten")])
def test_value_types_refuse(convert, text):
    with pytest.raises(argparse.ArgumentTypeError):
        convert(text)


def test_a_folder_flag_answers_to_its_own_name_and_the_common_one():
    def build(parser):
        cli_args.add_features_dir(parser, "--input_dir")
        cli_args.add_align_dir(parser, "--output_dir")

    assert _parse(build, ["--input_dir", "a", "--output_dir", "b"]).input_dir == "a"
    args = _parse(build, ["--features_dir", "f", "--align_dir", "g"])
    assert (args.input_dir, args.output_dir) == ("f", "g")
    assert _parse(build, []).input_dir == cli_args.FEATURES_DIR


def test_levels_parsed_at_once_or_kept_as_text():
    assert _parse(lambda p: cli_args.add_levels_arg(p, parsed_default=True), []).levels == list(
        ALL_LEVELS)
    assert _parse(lambda p: cli_args.add_levels_arg(p, parsed_default=True),
                  ["--levels", "0:20:10"]).levels == [0, 10, 20]
    assert _parse(cli_args.add_levels_arg, ["--levels", "0,50"]).levels == "0,50"


def test_ray_flags_become_ray_settings_only_with_ray():
    def build(parser):
        cli_args.add_device_arg(parser)
        cli_args.add_ray_args(parser)

    assert ray_settings(_parse(build, [])) is None
    assert ray_settings(_parse(build, ["--ray"])) == RaySettings(cli_args.LOCAL_RAY, 3, None, None)
    args = _parse(build, ["--ray", "auto", "--ray_retries", "0", "--device", "cpu",
                          "--gpu_memory_gb", "40"])
    assert ray_settings(args) == RaySettings("auto", 0, "cpu", 40.0)
