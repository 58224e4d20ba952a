"""torch.hub entrypoints of lipzoo: one per architecture of the registry.

    model = torch.hub.load("lipzoo/lipzoo", "convnet_s_aol", pretrained=True, dataset="fashion_mnist")

Each entrypoint is ``ARCH(pretrained=False, dataset=..., **kwargs)``; its docstring lists the
registered pretrained weights (``torch.hub.help(repo, "convnet_s_aol")``). The entrypoints are
generated from :mod:`lipzoo.registry` by :func:`lipzoo.factory.hub_entrypoint`; helpers carry a
leading underscore so they are not entrypoints.
"""

dependencies = ["torch", "safetensors", "huggingface_hub"]

import lipzoo as _lipzoo  # noqa: E402
from lipzoo.factory import hub_entrypoint as _hub_entrypoint  # noqa: E402

for _arch in _lipzoo.list_models():
    globals()[_arch] = _hub_entrypoint(_arch)
del _arch
