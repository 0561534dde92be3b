"""GET /v1/models and /v1/models/{model} through the real daemon: names, aliases, the 404."""

from __future__ import annotations

from typing import TYPE_CHECKING

import openai
import pytest

from tests.e2e.api import GEMMA, SMOL, assert_error

if TYPE_CHECKING:
    from tests.e2e.conftest import Daemon


def test_models_list_and_retrieve(daemon: Daemon) -> None:
    client = daemon.client()
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert sorted(ids) == sorted([SMOL, "smol", GEMMA])
    for m in models.data:
        assert m.object == "model"
        assert m.owned_by
        assert m.created > 0
    got = client.models.retrieve(SMOL)
    assert got.id == SMOL and got.object == "model"
    assert client.models.retrieve("smol").id == "smol"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.status_code == 404
    assert err.value.code == "model_not_found"
    assert_error(err.value.response, 404, code="model_not_found")
