"""Settings: ACCSMOOTH_* environment variables, validation, and the runtime options they make."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from pydantic import ValidationError

from server.settings import Settings, describe


def test_every_field_reads_its_accsmooth_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCSMOOTH_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("ACCSMOOTH_MAX_BATCH", "7")
    monkeypatch.setenv("ACCSMOOTH_MAX_QUEUE_DELAY_MS", "2.5")
    monkeypatch.setenv("ACCSMOOTH_API_KEY", "k")
    monkeypatch.setenv("ACCSMOOTH_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    settings = Settings()
    assert settings.models_dir == tmp_path and settings.max_batch == 7
    assert settings.max_queue_delay_ms == 2.5
    assert settings.api_key.get_secret_value() == "k"
    assert settings.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_defaults_match_the_documentation(monkeypatch):
    for name in ("ACCSMOOTH_MAX_SAMPLES", "ACCSMOOTH_SAMPLED_CONCURRENCY", "ACCSMOOTH_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.max_samples == 100_000 and settings.sampled_concurrency == 1
    assert settings.api_key is None and settings.protect_certify is False


def test_an_empty_api_key_means_no_key(monkeypatch):
    monkeypatch.setenv("ACCSMOOTH_API_KEY", "")
    assert Settings().api_key is None


@pytest.mark.parametrize(
    "name,value",
    [("MAX_BATCH", "0"), ("SAMPLED_CONCURRENCY", "-1"), ("MAX_QUEUE_DELAY_MS", "lots")],
)
def test_nonsense_values_fail_at_start(monkeypatch, name, value):
    monkeypatch.setenv(f"ACCSMOOTH_{name}", value)
    with pytest.raises(ValidationError):
        Settings()


def test_audit_sessions_get_few_threads_and_the_fast_path_all():
    settings = Settings(sampled_threads=1, intra_op_threads=0, trt_fp16=True)
    assert settings.sampled_runtime().intra_op_threads == 1
    assert settings.fast_runtime().intra_op_threads == 0
    assert settings.fast_runtime().trt_fp16 is True


def test_describe_gives_json_values_and_the_session_options_with_the_key_masked():
    settings = Settings(api_key="secret", intra_op_threads=2, sampled_threads=3)
    described = describe(settings)
    assert described["settings"]["api_key"] == "**********"
    assert "secret" not in json.dumps(described)
    assert described["fast_runtime"] == asdict(settings.fast_runtime())
    assert described["sampled_runtime"]["intra_op_threads"] == 3
