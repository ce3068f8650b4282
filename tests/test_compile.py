"""torch.compile captures a whole SEW network: each neuron is one custom-op node, time is not unrolled."""
import pytest
import torch

import sewforge

SPEC = "c8k3s1-BN-PLIF-{SEW Block (c8)-MPk2s2}*2-FC4"


def _net(memory="compact"):
    torch.manual_seed(0)
    return sewforge.build(SPEC, input_shape=(2, 16, 16), T=4, memory=memory)


def _neurons(net):
    return [m for m in net.modules() if isinstance(m, sewforge.BaseNeuron)]


@pytest.mark.parametrize("memory", ["compact", "lean"])
def test_explain_reports_no_graph_break_and_one_node_per_neuron(memory):
    net = _net(memory)  # what memory modes rerun in backward is left to the compiler
    x = torch.randn(4, 3, 2, 16, 16)
    explanation = torch._dynamo.explain(net)(x)
    assert explanation.graph_break_count == 0, [str(r.reason)[:200] for r in explanation.break_reasons]
    assert explanation.graph_count == 1
    nodes = [n for n in explanation.graphs[0].graph.nodes if "sewforge.neuron_forward" in str(n.target)]
    # 1 stem neuron + 2 blocks x 2 neurons, whatever T is: the loop over time is inside the op
    assert len(nodes) == len(_neurons(net)) == 5


@pytest.mark.slow
def test_compiled_network_equals_eager_in_outputs_and_gradients():
    net = _net()
    x = torch.randn(4, 3, 2, 16, 16)
    eager = net(x)
    eager.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    net.zero_grad()
    compiled = torch.compile(net)(x)
    compiled.square().sum().backward()
    torch.testing.assert_close(compiled, eager)
    for k, p in net.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], rtol=1e-4, atol=1e-5, msg=k)
