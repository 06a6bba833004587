"""Loader lists that fit the loader: each pack loader lists the files of its folder recognised as its kind
(safetensors header and metadata, or the published file names; nothing is unpickled), then the files whose kind
is unknown; files recognised as another kind are left out."""

import pickle

import torch
from safetensors.torch import save_file


class _Trap:
    """Unpickling this writes a marker file: the lists must never unpickle anything."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _options(host, node_id, name):
    spec = host.node_class(node_id).GET_NODE_INFO_V1()["input"]["required"][name]
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0]


def test_each_loader_lists_the_files_of_its_kind(host, tiny, tmp_path):
    from tests.comfy.test_cleaners import tiny_swinir

    d = host.models_dir / "diffbir"
    d.mkdir(exist_ok=True)
    save_file(tiny.tiny_ircontrolnet_state_dict(0), str(d / "lst_control.safetensors"))  # zero_convs keys
    save_file(tiny.tiny_csft_state_dict(0), str(d / "lst_layers.safetensors"))  # cft_blocks keys
    save_file({k: v.contiguous() for k, v in tiny_swinir().state_dict().items()}, str(d / "lst_cleaner.safetensors"))
    save_file({"lora_unet_down.lora_up.weight": torch.zeros(2, 2)}, str(d / "lst_a_lora.safetensors"))
    save_file({"foo.weight": torch.zeros(2)}, str(d / "lst_unknown.safetensors"))
    torch.save({"x": torch.zeros(1)}, d / "lst_realesrgan_swinir.pth")  # by the published name: a SwinIR
    marker = tmp_path / "unpickled"
    (d / "lst_mystery.ckpt").write_bytes(pickle.dumps(_Trap(marker)))  # unknown: listed everywhere, never opened
    import folder_paths

    getattr(folder_paths, "filename_list_cache", {}).clear()

    irc = _options(host, "AdaptBIR_IRControlNetLoader", "control_net_name")
    csft = _options(host, "AdaptBIR_CSFTLoader", "csft_name")
    restorer = _options(host, "AdaptBIR_RestorerLoader", "restorer_name")
    rvae = _options(host, "AdaptBIR_RestorationVAELoader", "ckpt_name")

    def mine(opts):
        return [o for o in opts if o.startswith("lst_")]

    assert mine(irc) == ["lst_control.safetensors", "lst_mystery.ckpt", "lst_unknown.safetensors"]
    assert mine(csft) == ["lst_layers.safetensors", "lst_mystery.ckpt", "lst_unknown.safetensors"]
    assert mine(restorer) == ["lst_cleaner.safetensors", "lst_realesrgan_swinir.pth", "lst_mystery.ckpt",
                              "lst_unknown.safetensors"]
    assert mine(rvae) == ["lst_mystery.ckpt", "lst_unknown.safetensors"]
    assert not marker.exists(), "a file was unpickled to build a list"


def test_face_loaders_list_detectors_and_parsers_apart(host, tiny, tmp_path):
    """Load Face Detector lists RetinaFace files (by their keys, or facexlib's published names), Load Face Parser
    ParseNet files; each leaves the other's out, and both list what cannot be told."""
    from tests.comfy.test_faces import tiny_detector_state_dict, tiny_parser_state_dict

    d = host.models_dir / "facedetection"
    d.mkdir(exist_ok=True)
    save_file(tiny_detector_state_dict(), str(d / "lsf_a_detector.safetensors"))
    save_file(tiny_parser_state_dict(), str(d / "lsf_b_parser.safetensors"))
    save_file({"foo.weight": torch.zeros(2)}, str(d / "lsf_unknown.safetensors"))
    marker = tmp_path / "unpickled"
    for name in ("lsf_detection_Resnet50_Final.pth", "lsf_parsing_parsenet.pth"):  # by name (never unpickled)
        (d / name).write_bytes(pickle.dumps(_Trap(marker)))
    import folder_paths

    getattr(folder_paths, "filename_list_cache", {}).clear()
    detectors = [o for o in _options(host, "AdaptBIR_FaceDetectorLoader", "detector_name") if o.startswith("lsf_")]
    parsers = [o for o in _options(host, "AdaptBIR_FaceParserLoader", "parser_name") if o.startswith("lsf_")]
    # the keys decide for the safetensors files; "parsenet" in a name makes a parser, while the lsf_ prefix hides
    # "detection_" (a prefix rule) so that file is unknown here: listed in both
    assert detectors == ["lsf_a_detector.safetensors", "lsf_detection_Resnet50_Final.pth",
                         "lsf_unknown.safetensors"]
    assert parsers == ["lsf_b_parser.safetensors", "lsf_parsing_parsenet.pth", "lsf_detection_Resnet50_Final.pth",
                       "lsf_unknown.safetensors"]
    assert not marker.exists(), "a file was unpickled to build a list"


def test_facexlib_file_names_pick_their_loader(pack):
    """The published facexlib files (.pth, no header to read) go to their own loader by name."""
    kinds = pack("nodes.file_lists").NAME_KINDS
    import re

    def by_name(name):
        return {k for k, pats in kinds.items() if any(re.search(p, name, re.IGNORECASE) for p in pats)}

    assert by_name("detection_Resnet50_Final.pth") == {"face_detector"}
    assert by_name("parsing_parsenet.pth") == {"face_parser"}


def test_hypir_loader_lists_hypir_files_and_other_loaders_leave_them_out(host, tiny, tmp_path):
    """Load HYPIR LoRA lists HYPIR's LoRA (its peft keys on the diffusers UNet, or the published name
    HYPIR_sd2.pth, never unpickled) and what cannot be told; a file of another kind is left out, and Load
    IRControlNet leaves a HYPIR file out of its list."""
    from tests.comfy.test_faces import tiny_detector_state_dict
    from tests.comfy.test_hypir import tiny_hypir_state_dict

    hypir = tiny_hypir_state_dict(tiny)
    d = host.models_dir / "hypir" / "lsh"
    d.mkdir(parents=True, exist_ok=True)
    save_file(hypir, str(d / "a_hypir_keys.safetensors"))
    save_file(tiny_detector_state_dict(), str(d / "b_detector.safetensors"))
    save_file({"foo.weight": torch.zeros(2)}, str(d / "c_unknown.safetensors"))
    marker = tmp_path / "unpickled"
    (d / "HYPIR_sd2.pth").write_bytes(pickle.dumps(_Trap(marker)))  # by the published name
    save_file(hypir, str(host.models_dir / "diffbir" / "lsh_hypir_in_diffbir.safetensors"))
    import folder_paths

    getattr(folder_paths, "filename_list_cache", {}).clear()
    listed = [o.replace("\\", "/") for o in _options(host, "AdaptBIR_HYPIRLoader", "hypir_name")]
    assert [o for o in listed if o.startswith("lsh/")] == ["lsh/HYPIR_sd2.pth", "lsh/a_hypir_keys.safetensors",
                                                           "lsh/c_unknown.safetensors"] or \
        [o for o in listed if o.startswith("lsh/")] == ["lsh/a_hypir_keys.safetensors", "lsh/HYPIR_sd2.pth",
                                                        "lsh/c_unknown.safetensors"]
    irc = _options(host, "AdaptBIR_IRControlNetLoader", "control_net_name")
    assert "lsh_hypir_in_diffbir.safetensors" not in irc
    assert not marker.exists(), "a file was unpickled to build a list"
