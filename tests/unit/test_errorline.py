"""The one-line error of a crashed attempt, from real exceptions raised in a real module file and
described by the trainer's own `describe_exception` (what goes into exit.json)."""

from __future__ import annotations

import importlib.util
import textwrap
from collections.abc import Callable

import pytest

from supervisor.errorline import MAX_CHARS, exception_line, raised_at
from supervisor.jobfiles.exitrecord import ExitRecord
from supervisor.jobfiles.monitorfiles import MonitorExit
from supervisor.rules.outcome import classify_end
from trainer.attempt import describe_exception

MODEL_SOURCE = '''
def empty_assert(loss):
    assert loss < 1.0

def assert_with_message(loss):
    assert loss < 1.0, f"loss {loss} too high"

def message_on_next_line():
    raise RuntimeError("\\nCUDA error: device-side assert triggered\\nCompile with TORCH_USE_CUDA_DSA")

def empty_message():
    raise StopIteration

def plain():
    raise ValueError("bad batch shape (3, 8)")

def wrapped(loss):
    try:
        empty_assert(loss)
    except AssertionError as exc:
        raise RuntimeError() from exc

def long_message():
    raise RuntimeError("x" * 1000)
'''


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> object:
    path = tmp_path_factory.mktemp("src") / "my_model.py"
    path.write_text(textwrap.dedent(MODEL_SOURCE))
    spec = importlib.util.spec_from_file_location("my_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def described(call: Callable[[], object]) -> dict[str, str]:
    try:
        call()
    except BaseException as exc:  # StopIteration included
        return describe_exception(exc)
    raise AssertionError("the call did not raise")


def test_empty_assert_names_the_place_and_the_expression(model: object) -> None:
    line = exception_line(described(lambda: model.empty_assert(3.0)))  # type: ignore[attr-defined]
    assert line == "AssertionError at my_model.py:3: assert loss < 1.0"


def test_assert_with_a_message_keeps_both(model: object) -> None:
    line = exception_line(described(lambda: model.assert_with_message(3.0)))  # type: ignore[attr-defined]
    assert line == 'AssertionError at my_model.py:6: assert loss < 1.0, f"loss {loss} too high" — loss 3.0 too high'


def test_a_message_that_starts_on_the_next_line_shows_its_first_real_line(model: object) -> None:
    line = exception_line(described(model.message_on_next_line))  # type: ignore[attr-defined]
    assert line == "RuntimeError: CUDA error: device-side assert triggered"


def test_an_empty_message_names_where_it_was_raised(model: object) -> None:
    line = exception_line(described(model.empty_message))  # type: ignore[attr-defined]
    assert line == "StopIteration at my_model.py:12: raise StopIteration"


def test_a_plain_message_is_type_and_message(model: object) -> None:
    assert exception_line(described(model.plain)) == "ValueError: bad batch shape (3, 8)"  # type: ignore[attr-defined]


def test_a_chained_exception_points_at_the_exception_finally_raised(model: object) -> None:
    line = exception_line(described(lambda: model.wrapped(3.0)))  # type: ignore[attr-defined]
    assert line == "RuntimeError at my_model.py:21: raise RuntimeError() from exc"


def test_long_messages_fit_a_phone_notification(model: object) -> None:
    line = exception_line(described(model.long_message))  # type: ignore[attr-defined]
    assert len(line) == MAX_CHARS and line.endswith("…") and line.startswith("RuntimeError: xxx")


def test_without_a_traceback_it_is_type_and_message() -> None:
    assert exception_line({"type": "AssertionError", "message": "", "traceback": ""}) == "AssertionError"
    assert raised_at("no frames here") is None


def test_the_attempts_detail_uses_it(model: object) -> None:
    record = ExitRecord(status="exception", time=0.0, pid=1,
                        exception=described(lambda: model.empty_assert(3.0)))  # type: ignore[attr-defined]
    outcome = classify_end(record, MonitorExit(exit_code=1, signal=None, ended_at=0.0), None)
    assert (outcome.cause, outcome.detail) == ("crash", "AssertionError at my_model.py:3: assert loss < 1.0")
