"""Why fedw2v has no --secagg (README, "Secure aggregation"): the facts about the installed Flower 1.42 and about
fedw2v's server that the README's reasons rest on. If Flower ships a Message-API SecAgg+ or fedw2v's server
changes, one of these fails and the README's reasons must be checked again."""

from __future__ import annotations

import importlib
import inspect
import re

import numpy as np
import pytest

MOD = "flwr.client.mod.secure_aggregation.secaggplus_mod"  # the module (its package's name is the function)


def test_secaggplus_mod_reads_the_reply_as_a_legacy_fitres_which_fedw2vs_reply_is_not():
    """secaggplus_mod masks ``compat.recorddict_to_fitres(reply)``: the legacy keys fitres.parameters /
    fitres.num_examples. fedw2v's ClientApp replies on the Message API ("arrays", "metrics")."""
    from flwr.app import MetricRecord, RecordDict
    from flwr.compat.common import recorddict_compat as compat

    from fedw2v.fl import client_app
    from fedw2v.fl.records import record_from_arrays

    mod_module = importlib.import_module(MOD)
    assert "compat.recorddict_to_fitres(out_content" in inspect.getsource(mod_module.secaggplus_mod)
    assert 'reply = RecordDict({\n            "arrays": record_from_arrays' in inspect.getsource(client_app.run_train)
    reply = RecordDict({"arrays": record_from_arrays({"w": np.zeros(3, np.float32)}),
                        "metrics": MetricRecord({"samples": 3, "loss": 1.0})})
    with pytest.raises(KeyError, match="fitres.parameters"):
        compat.recorddict_to_fitres(reply, keep_input=True)


def test_the_workflow_owns_the_round_through_a_legacy_strategy_and_context():
    """SecAggPlusWorkflow needs a LegacyContext and drives the round itself: it samples with the legacy
    Strategy's configure_fit over a ClientManager's node proxies, sends and receives its own four stages, and
    hands the unmasked sum to Strategy.aggregate_fit. fedw2v's server samples logical clients itself (a
    checkpointed sampler), pushes and pulls its own messages (round timeout, late replies), averages the
    individual updates (DP clipping, the footprint hook) and checkpoints."""
    from flwr.app import Context, RecordDict
    from flwr.server.workflow import SecAggPlusWorkflow

    workflow = SecAggPlusWorkflow(num_shares=3, reconstruction_threshold=2)
    with pytest.raises(TypeError, match="Expect a LegacyContext"):
        workflow(grid=None, context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    source = inspect.getsource(SecAggPlusWorkflow)
    for call in ("context.strategy.configure_fit(", "context.client_manager", "context.strategy.aggregate_fit(",
                 "grid.send_and_receive("):
        assert call in source, call
    # the clients' sum is a weighted sum of full weights quantised in [-clipping_range, clipping_range]
    assert workflow.clipping_range == 8.0 and "num_examples / state.max_weight" in inspect.getsource(
        importlib.import_module(MOD))


def test_a_secaggplus_participant_is_a_node_but_fedw2v_runs_several_clients_per_node(tmp_path):
    """SecAgg+ keeps one participant's keys and shares per node (the workflow's dicts are keyed by node id,
    the mod keeps its state in the node's context). fedw2v's simulation starts one SuperNode per client that
    can train at once and sends the round's clients round-robin to them: the demo (4 clients per round, 1 CPU
    each) on 2 cores has 2 SuperNodes, so two clients of one round share a node."""
    from fedw2v.config.simulate import SimulateConfig
    from fedw2v.fl import server_app, simulate

    config = SimulateConfig(clients_manifest="c", run_dir=str(tmp_path / "r"), clients_per_round=4,
                            cpus_per_client=1, gpus_per_client=0)
    res = simulate.plan_resources(config, cuda_devices=0, cpus=2)
    assert min(config.clients_per_round, res.parallel_clients) == 2 < config.clients_per_round
    assert re.search(r"num_supernodes=max\(1, min\((self\.)?config\.clients_per_round, res\.parallel_clients\)\)",
                     inspect.getsource(simulate))
    assert "nodes[i % len(nodes)]" in inspect.getsource(server_app)  # simulation: round-robin over nodes
    mod_module = importlib.import_module(MOD)
    assert "ctxt.state.config_records[RECORD_KEY_STATE]" in inspect.getsource(mod_module.secaggplus_mod)
