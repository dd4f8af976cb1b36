"""Pytest fixtures that start and stop the local vLLM-shaped teacher server (fastdistill.testing.teacher_server).

Import the fixture into a test module (``from served_fixtures import teacher_server  # noqa: F401``).
"""

from __future__ import annotations

import pytest

from fastdistill.testing.teacher_server import Faults, TeacherServer


@pytest.fixture
def teacher_server():
    """A factory: ``teacher_server(model, tokenizer, **kwargs)`` starts a server on 127.0.0.1.

    Each server is stopped after the test.
    """
    started: list[TeacherServer] = []

    def start(model, tokenizer, faults: Faults | dict | None = None, **kwargs) -> TeacherServer:
        if isinstance(faults, dict):
            faults = Faults(**faults)
        kwargs.setdefault("model_name", "teacher")
        server = TeacherServer(model, tokenizer, faults=faults, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
