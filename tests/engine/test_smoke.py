from tests.support import EngineProcess


def test_engine_answers_ping(engine_process: EngineProcess) -> None:
    assert engine_process.client().ping() is True
