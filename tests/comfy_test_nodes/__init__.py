"""Test-only ComfyUI nodes: loaders of tiny seeded models and tokenizer-free conditioning.

Only the test harness puts this folder in ComfyUI's custom_nodes; the pack never registers these nodes.
"""

from comfy_api.latest import ComfyExtension, io

from . import tiny

KINDS = ["sd2-eps", "sd2-v", "sd2-v-zsnr", "sdxl"]


class TinyCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIRTest_TinyCheckpoint", display_name="Tiny Checkpoint (tests)", category="testing",
            description="A tiny seeded UNet + VAE for graph tests.",
            inputs=[io.Combo.Input("kind", options=KINDS, default="sd2-eps", tooltip="architecture"),
                    io.Int.Input("seed", default=0, min=0, max=2**31, tooltip="weights seed")],
            outputs=[io.Model.Output("model", tooltip="tiny model"), io.Vae.Output("vae", tooltip="tiny VAE")])

    @classmethod
    def execute(cls, kind, seed):
        return io.NodeOutput(tiny.tiny_model(kind, seed), tiny.tiny_vae(seed))


class TinyCheckpointLoader(io.ComfyNode):
    """Stands in for CheckpointLoaderSimple in example workflows: the same three outputs."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIRTest_TinyCheckpointLoader", display_name="Tiny Checkpoint Loader (tests)",
            category="testing", description="A tiny seeded UNet, CLIP and VAE with CheckpointLoaderSimple's outputs.",
            inputs=[io.Combo.Input("kind", options=KINDS, default="sd2-eps", tooltip="architecture"),
                    io.Int.Input("seed", default=0, min=0, max=2**31, tooltip="weights seed")],
            outputs=[io.Model.Output("model", tooltip="tiny model"), io.Clip.Output("clip", tooltip="tiny CLIP"),
                     io.Vae.Output("vae", tooltip="tiny VAE")])

    @classmethod
    def execute(cls, kind, seed):
        return io.NodeOutput(tiny.tiny_model(kind, seed), tiny.tiny_clip(seed), tiny.tiny_vae(seed))


class TinyVAE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIRTest_TinyVAE", display_name="Tiny VAE (tests)", category="testing",
            description="A tiny seeded KL VAE.",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**31, tooltip="weights seed"),
                    io.Int.Input("latent_channels", default=4, min=1, max=16, tooltip="latent channels")],
            outputs=[io.Vae.Output("vae", tooltip="tiny VAE")])

    @classmethod
    def execute(cls, seed, latent_channels=4):
        return io.NodeOutput(tiny.tiny_vae(seed, latent_channels))


class TinyConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIRTest_TinyConditioning", display_name="Tiny Conditioning (tests)", category="testing",
            description="Deterministic conditioning from text without a tokenizer.",
            inputs=[io.String.Input("text", default="", tooltip="text"),
                    io.Int.Input("seed", default=0, min=0, max=2**31, tooltip="seed"),
                    io.Boolean.Input("sdxl", default=False, tooltip="add SDXL pooled output and sizes")],
            outputs=[io.Conditioning.Output("conditioning", tooltip="conditioning")])

    @classmethod
    def execute(cls, text, seed, sdxl):
        return io.NodeOutput(tiny.tiny_conditioning(text, seed, sdxl=sdxl))


class TinyCLIP(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIRTest_TinyCLIP", display_name="Tiny CLIP (tests)", category="testing",
            description="ComfyUI's CLIP tokenizer with a tiny seeded text model that fits the tiny SDXL UNet.",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**31, tooltip="weights seed")],
            outputs=[io.Clip.Output("clip", tooltip="tiny CLIP")])

    @classmethod
    def execute(cls, seed):
        return io.NodeOutput(tiny.tiny_clip(seed))


class TensorImage(io.ComfyNode):
    """Feeds a tensor that a test put in ``tiny.IMAGES[name]`` into a graph."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIRTest_Image", display_name="Test Image (tests)", category="testing",
            description="An IMAGE tensor registered by the test.",
            inputs=[io.String.Input("name", default="", tooltip="key in tiny.IMAGES")],
            outputs=[io.Image.Output("image", tooltip="the tensor")])

    @classmethod
    def fingerprint_inputs(cls, name):
        return float("nan")  # the tensor behind a name can change between runs

    @classmethod
    def execute(cls, name):
        return io.NodeOutput(tiny.IMAGES[name])


class Sink(io.ComfyNode):
    """An output node that accepts anything, so tests can run graphs whose last node is not an output."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AdaptBIRTest_Sink", display_name="Sink (tests)", category="testing",
            description="Accepts any value.", is_output_node=True,
            inputs=[io.AnyType.Input("value", tooltip="anything")], outputs=[])

    @classmethod
    def execute(cls, value):
        return io.NodeOutput()


class TestNodes(ComfyExtension):
    async def get_node_list(self):
        return [TinyCheckpoint, TinyCheckpointLoader, TinyVAE, TinyConditioning, TinyCLIP, TensorImage, Sink]


async def comfy_entrypoint():
    return TestNodes()
