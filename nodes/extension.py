"""The pack's V3 extension: the one place that lists every node the pack registers."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import (
    cleaners,
    csft,
    degrade,
    faces,
    hypir,
    iqa,
    ircontrolnet,
    latent,
    metrics,
    restoration_vae,
    sampling,
    supir,
    tiled_sampling,
    triage,
)


def node_list() -> list[type[io.ComfyNode]]:
    """Every node the pack registers, in menu order."""
    return [*iqa.NODES, *triage.NODES, *latent.NODES, *restoration_vae.NODES, *cleaners.NODES, *degrade.NODES,
            *ircontrolnet.NODES, *csft.NODES, *sampling.NODES,
            *tiled_sampling.NODES, *supir.NODES, *metrics.NODES, *faces.NODES, *hypir.NODES]


class AdaptBIRExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_list()
