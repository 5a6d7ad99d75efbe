"""Hand-made teacher data for the teacher-data gate tests (issue #10): two passages, a question they
answer, one sentence they support and one they do not, the default reference gate, and a scripted
teacher that hands out its drafts one attempt at a time. Used by test_teacher_faithfulness.py (the gate
alone) and test_pipeline_gate.py (the gate through the pipeline steps). Plain data: no fixtures to register."""

from __future__ import annotations

from collections.abc import Callable

from kdflow.config import GateConfig
from kdflow.kb import Passage

PASSAGES = [
    Passage(id="services/endpoints-0", topic="services", source="services.md", section="Services > Endpoints",
            text="A Service selects its backend Pods with a label selector. The control plane keeps an EndpointSlice "
                 "for the Service up to date with the IP addresses of the ready Pods that match the selector. "
                 "A Pod that fails its readiness probe is removed from the EndpointSlice until it is ready again."),
    Passage(id="services/types-0", topic="services", source="services.md", section="Services > Types",
            text="The default Service type is ClusterIP, which exposes the Service on an internal cluster IP address. "
                 "A NodePort Service also opens the same port on every node."),
]
TEXTS = [p.text for p in PASSAGES]
QUESTION = "What happens to a Pod that fails its readiness probe?"
SUPPORTED = "A Pod that fails its readiness probe is removed from the EndpointSlice until it is ready again."
UNSUPPORTED = "The kubelet then restarts the node and moves the Pod to another cluster in a different region."
GATE = GateConfig()


def teacher(*drafts: str) -> Callable[[int], str]:
    """The teacher's drafts, one per attempt, with the attempts it was asked for (``draft.asked``)."""

    def draft(attempt: int) -> str:
        draft.asked.append(attempt)
        return drafts[attempt]

    draft.asked = []
    return draft
