"""The student model: resolution (hub id, folder, GGUF converted once), the device plan from
free GPU memory, batched answering, and LoRA/QLoRA fine-tuning with adapters chained across cycles.

Only light modules are imported here; torch, transformers and peft load inside the functions
that need them, so importing this package (as the DAG does) stays fast.
"""

from kdflow.student.device import DevicePlan, plan_device, release_memory
from kdflow.student.prompt import DEFAULT_SYSTEM_PROMPT, build_prompt

__all__ = ["DEFAULT_SYSTEM_PROMPT", "DevicePlan", "build_prompt", "plan_device", "release_memory"]
