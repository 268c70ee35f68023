"""The demo's passive OpenMP waiting is FlowStone's choice for its own work only: a policy the
user set stands, and a bake profile's measuring process gets the user's environment back."""

import os

from flowstone import threads


def test_passive_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv(threads.POLICY_ENV, raising=False)
    monkeypatch.delenv(threads.CHOSEN_ENV, raising=False)
    assert threads.wait_passively()
    assert os.environ.get(threads.POLICY_ENV) == "PASSIVE"
    threads.restore_user_policy()  # what a profile's child does first
    assert os.environ.get(threads.POLICY_ENV) is None
    assert os.environ.get(threads.CHOSEN_ENV) is None


def test_a_user_policy_stays_everywhere(monkeypatch):
    monkeypatch.setenv(threads.POLICY_ENV, "ACTIVE")
    monkeypatch.delenv(threads.CHOSEN_ENV, raising=False)
    assert not threads.wait_passively()
    threads.restore_user_policy()
    assert os.environ.get(threads.POLICY_ENV) == "ACTIVE"
