"""Runs inside pytester: the plugin's fixtures on a real dind swarm with a small stack."""


def test_cluster_shape(swarm):
    nodes = {n.name: n for n in swarm.nodes()}
    assert sorted(nodes) == ["master-1", "worker-1", "worker-2"]
    assert nodes["master-1"].leader and nodes["master-1"].role == "manager"
    assert all(n.ready for n in nodes.values())
    assert nodes["master-1"].labels == {"reliability": "high"}
    assert nodes["worker-2"].labels == {"disk": "ssd"}
    assert all(n.engine_labels == {"pool": "test"} for n in nodes.values())


def test_stack_converged(swarm_stack):
    assert swarm_stack.name == "SMALL"
    sleeper = swarm_stack.service("sleeper")
    assert (sleeper.running, sleeper.desired, sleeper.replicas) == (3, 3, 3)
    everywhere = swarm_stack.service("everywhere")
    assert everywhere.mode == "global" and everywhere.running == 3


def test_node_hosts_run_inside_nodes(swarm_node_hosts):
    assert swarm_node_hosts["worker-1"].run("hostname").stdout.strip() == "worker-1"
