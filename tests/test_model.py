import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from affectvlm.data.emotions import EMOTIONS
from affectvlm.model.affect_model import AffectVLM, build_model
from affectvlm.model.embedding_norm import EmbeddingNorm
from affectvlm.model.factory import PACKAGE_CONFIGS, ModelConfigError, create_clip
from affectvlm.model.fusion import MaskedPooling
from affectvlm.model.prompts import PromptBank

SIZE = 112  # affect-tiny's image size


@pytest.fixture(scope="module")
def bank():
    """The default templates and words cut down to keep the text tower's work small."""
    return PromptBank.from_dict({**PromptBank.default().as_dict(),
                                 "templates": ["a 3D scan of a face showing {emotion}", "a {adjective} face"]})


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("affect-tiny").eval()


def random_images(batch, views, seed=0):
    return torch.randn(batch, views, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


class CallCounter:
    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_hook(lambda _, inputs, __: self.calls.append(inputs[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.handle.remove()


def randomise_scorer(pooling: MaskedPooling, seed: int):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pooling.scorer.weight.copy_(torch.randn(pooling.scorer.weight.shape, generator=generator) * 3)
        pooling.scorer.bias.copy_(torch.randn((), generator=generator))


def test_encode_views_is_one_image_tower_call_equal_to_per_view_encoding(model):
    images = random_images(2, 3)
    with torch.no_grad(), CallCounter(model.clip.visual) as counter:
        embeddings = model.encode_views(images)
    assert counter.calls == [6]
    assert embeddings.shape == (2, 3, 128)
    with torch.no_grad():
        for view in range(3):
            separately = model.clip.encode_image(images[:, view])
            torch.testing.assert_close(embeddings[:, view], separately, rtol=1e-4, atol=1e-5)


def test_mean_fusion_is_the_mean_of_normalised_views(model):
    views = torch.randn(4, 3, 128, generator=torch.Generator().manual_seed(1)) * 5
    expected = torch.stack([F.normalize(views[b], dim=-1).mean(dim=0) for b in range(4)])
    torch.testing.assert_close(model.fuse_views(views), expected)
    mask = torch.tensor([[True, False, True]] * 4)
    torch.testing.assert_close(model.fuse_views(views, mask), F.normalize(views[:, [0, 2]], dim=-1).mean(dim=1))


def test_attention_fusion_weights_valid_views_by_softmax_and_ignores_masked_ones():
    pooling = MaskedPooling("attention", 16)
    views = torch.randn(5, 4, 16, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(pooling(views), MaskedPooling("mean", 16)(views))  # untrained: the mean
    randomise_scorer(pooling, seed=3)
    mask = torch.tensor([[True, True, False, True], [False, True, True, False], [True, False, False, False],
                         [True, True, True, True], [False, False, True, True]])
    fused = pooling(views, mask)
    for row in range(5):
        valid = F.normalize(views[row, mask[row]], dim=-1)
        weights = pooling.scorer(valid).squeeze(-1).softmax(dim=0)
        torch.testing.assert_close(fused[row], weights @ valid)
    changed = views.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 16) * 100
    changed[0, 2] = float("nan")
    torch.testing.assert_close(pooling(changed, mask), fused)
    assert not torch.allclose(pooling(views), fused)  # the mask did matter


def test_fusion_rejects_rows_without_a_valid_entry_and_bad_shapes():
    pooling = MaskedPooling("attention", 8)
    with pytest.raises(ValueError, match="at least one valid entry"):
        pooling(torch.randn(2, 3, 8), torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="does not match"):
        pooling(torch.randn(2, 3, 8), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown fusion 'max'"):
        MaskedPooling("max", 8)


def test_fuse_frames_pools_sequences_with_a_mask():
    torch.manual_seed(0)
    model = build_model("affect-tiny", frame_fusion="attention")
    randomise_scorer(model.frame_fusion, seed=4)
    frames = torch.randn(3, 6, 128)
    mask = torch.arange(6).expand(3, 6) < torch.tensor([[6], [2], [4]])  # sequences of 6, 2 and 4 frames
    pooled = model.fuse_frames(frames, mask)
    assert pooled.shape == (3, 128)
    for row, length in enumerate((6, 2, 4)):
        torch.testing.assert_close(pooled[row], model.fuse_frames(frames[row:row + 1, :length])[0])


def test_class_embeddings_are_the_renormalised_mean_of_normalised_prompt_embeddings(bank):
    torch.manual_seed(0)
    model = build_model("affect-tiny", classes=("anger", "neutral", "surprise")).eval()
    embeddings = model.class_embeddings(bank)
    assert embeddings.shape == (3, 128)
    with torch.no_grad():
        for row, emotion in enumerate(model.classes):
            prompts = bank.class_prompts(emotion)
            assert len(prompts) == 6
            each = [F.normalize(model.clip.encode_text(model.tokenizer([prompt]))[0], dim=-1) for prompt in prompts]
            torch.testing.assert_close(embeddings[row], F.normalize(torch.stack(each).mean(dim=0), dim=0),
                                       rtol=1e-4, atol=1e-5)


def test_class_embeddings_are_cached_until_weights_or_bank_change(model, bank, tmp_path):
    with CallCounter(model.clip.transformer) as counter:
        def ensembles():  # text-tower calls with every class prompt at once
            return sum(size == 42 for size in counter.calls)

        first = model.class_embeddings(bank)
        assert model.class_embeddings(bank) is first and ensembles() == 1

        optimiser = torch.optim.SGD(model.clip.parameters(), lr=0.1)
        model.clip.encode_text(model.tokenizer(["a happy face"])).sum().backward()
        optimiser.step()
        after_step = model.class_embeddings(bank)
        assert ensembles() == 2 and not torch.allclose(after_step, first)

        model.load_state_dict(build_model("affect-tiny").state_dict())
        after_load = model.class_embeddings(bank)
        assert ensembles() == 3 and not torch.allclose(after_load, after_step)
        assert model.class_embeddings(bank) is after_load

        model.clear_class_embeddings()
        model.class_embeddings(bank)
        assert ensembles() == 4

    user = tmp_path / "more.json"
    user.write_text(json.dumps({"templates": ["a clay head, {adjective}"]}))
    assert not torch.allclose(model.class_embeddings(bank.extended(user)), after_load)


def test_classify_gives_probabilities_and_temperature_scales_logits(model, bank):
    images = random_images(3, 2, seed=5)
    with torch.no_grad():
        probabilities = model.classify(images, bank)
        assert probabilities.shape == (3, len(EMOTIONS))
        torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(3))
        embeddings = model.fuse_views(model.encode_views(images))
        logits = model.logits(embeddings, bank)
        cosine = F.normalize(embeddings, dim=-1) @ model.class_embeddings(bank).T
        torch.testing.assert_close(logits, cosine * model.clip.logit_scale.exp())
        torch.testing.assert_close(probabilities, logits.softmax(dim=1))
        model.set_temperature(2.5)
        torch.testing.assert_close(model.logits(embeddings, bank), logits / 2.5)
        model.set_logit_scale(40.0)
        torch.testing.assert_close(model.logits(embeddings, bank), cosine * 40.0 / 2.5)
    assert model.state_dict()["temperature"] == 2.5  # calibration travels with the weights
    with pytest.raises(ValueError, match="temperature must be a positive"):
        model.set_temperature(0.0)
    with pytest.raises(ValueError, match="logit scale must be a positive"):
        model.set_logit_scale(float("nan"))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_zero_shot_from_a_local_weights_file(tmp_path, bank, suffix):
    torch.manual_seed(7)
    trained = create_clip("affect-tiny").clip
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(trained.state_dict(), path)
    else:
        torch.save(trained.state_dict(), path)
    model = build_model("affect-tiny", pretrained=path).eval()
    for name, tensor in trained.state_dict().items():
        assert torch.equal(model.clip.state_dict()[name], tensor), name
    reference = AffectVLM(trained, open_clip.get_tokenizer("affect-tiny")).eval()
    images = random_images(2, 3, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(model.classify(images, bank), reference.classify(images, bank))


def test_weights_that_do_not_fit_or_are_not_weights_give_a_one_line_error(tmp_path):
    wrong = tmp_path / "small.safetensors"
    save_file(create_clip("affect-small").clip.state_dict(), wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    for path in (wrong, garbage, tmp_path / "missing.safetensors"):
        with pytest.raises(ModelConfigError) as error:
            create_clip("affect-tiny", pretrained=path)
        assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
    with pytest.raises(ModelConfigError, match="not a weights file, nor a pretrained tag of affect-tiny"):
        create_clip("affect-tiny", pretrained="no-such-tag")


def test_build_from_config_dict_round_trips_to_identical_outputs(bank):
    torch.manual_seed(9)
    original = build_model("affect-tiny", view_fusion="attention", frame_fusion="attention",
                           classes=("happiness", "sadness", "surprise")).eval()
    randomise_scorer(original.view_fusion, seed=10)
    original.set_temperature(1.7)
    stored = json.loads(json.dumps(original.config_dict()))
    rebuilt = build_model(stored).eval()
    rebuilt.load_state_dict(original.state_dict())
    assert rebuilt.config_dict() == original.config_dict()
    assert rebuilt.classes == ("happiness", "sadness", "surprise")
    images = random_images(2, 3, seed=11)
    with torch.no_grad():
        assert torch.equal(rebuilt.classify(images, bank), original.classify(images, bank))


def test_package_configs_json_configs_and_open_clip_names_build(tmp_path):
    assert {"affect-tiny", "affect-small-224"} <= set(PACKAGE_CONFIGS) <= set(open_clip.list_models())
    config = open_clip.get_model_config("affect-tiny")
    config["vision_cfg"]["image_size"] = 64
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(config))
    created = create_clip(path)
    assert created.clip.visual.image_size == (64, 64) and created.config["name"] is None
    assert created.tokenizer(["a face"]).shape == (1, config["text_cfg"]["context_length"])
    model = build_model("ViT-S-32")  # one of open_clip's own architectures, with the default tokenizer
    with torch.no_grad():
        embeddings = model.encode_views(torch.randn(1, 2, 3, 224, 224))
    assert embeddings.shape == (1, 2, open_clip.get_model_config("ViT-S-32")["embed_dim"])
    assert model.normalisation.mean == open_clip.OPENAI_DATASET_MEAN
    resnet = create_clip("RN50")  # a ResNet image tower
    assert resnet.clip.visual.output_dim == 1024 and resnet.tokenizer(["a face"]).shape == (1, 77)


def test_stored_config_keeps_its_normalisation():
    created = create_clip("affect-tiny")
    stored = {**created.config, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    rebuilt = create_clip(stored)
    assert rebuilt.normalisation == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert rebuilt.config == stored


@pytest.mark.parametrize("content, problem", [
    ("{broken", "not valid JSON"),
    (json.dumps({"embed_dim": 64}), "not an open_clip model config"),
    (json.dumps({"embed_dim": 64, "vision_cfg": {"widht": 3}, "text_cfg": {}}), "not a usable open_clip model"),
])
def test_bad_model_names_and_configs_give_a_one_line_error(tmp_path, content, problem):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(ModelConfigError) as error:
        create_clip(path)
    assert str(error.value).startswith(str(path)) and problem in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ModelConfigError, match="unknown model 'ViT-Q-99'"):
        create_clip("ViT-Q-99")


def test_embedding_norm_standardises_like_batch_norm_and_keeps_its_running_statistics():
    generator = torch.Generator().manual_seed(11)
    norm, reference = EmbeddingNorm(16), torch.nn.BatchNorm1d(16, affine=False, momentum=0.1)
    for _ in range(3):
        embeddings = torch.randn(4, 3, 16, generator=generator) * 5 + torch.randn(16, generator=generator)
        torch.testing.assert_close(norm(embeddings), reference(embeddings.reshape(12, 16)).reshape(4, 3, 16))
    torch.testing.assert_close(norm.running_mean, reference.running_mean)
    torch.testing.assert_close(norm.running_var, reference.running_var)
    norm.eval(), reference.eval()
    probe = torch.randn(5, 16, generator=generator)
    torch.testing.assert_close(norm(probe), reference(probe))


def test_a_fresh_embedding_norm_leaves_embeddings_as_they_are_in_evaluation():
    embeddings = torch.randn(6, 32, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(EmbeddingNorm(32).eval()(embeddings), embeddings, rtol=1e-5, atol=1e-5)


def test_embedding_norm_refuses_a_single_embedding_in_training():
    with pytest.raises(ValueError, match="at least 2"):
        EmbeddingNorm(8)(torch.randn(1, 8))


def test_standardised_view_embeddings_of_similar_images_are_spread_apart():
    """Near-identical inputs (one image plus small noise) give near-identical embeddings from a tower without
    batch statistics of its own (a ViT); standardising over the batch spreads them, which is what keeps training
    out of the collapse."""
    torch.manual_seed(0)
    model = build_model({"embed_dim": 32, "vision_cfg": {"image_size": SIZE, "layers": 2, "width": 64,
                                                         "head_width": 32, "patch_size": 16},
                         "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                      "layers": 1}}).train()
    images = random_images(1, 1, seed=3) + 0.05 * random_images(8, 1, seed=4)
    with torch.no_grad():
        raw = F.normalize(model.clip.encode_image(images.flatten(0, 1)), dim=-1)
        standardised = F.normalize(model.encode_views(images).flatten(0, 1), dim=-1)
    off_diagonal = ~torch.eye(8, dtype=torch.bool)
    raw_cosine = (raw @ raw.T)[off_diagonal].mean()
    standardised_cosine = (standardised @ standardised.T)[off_diagonal].mean()
    assert raw_cosine > 0.95 and standardised_cosine < 0.2, (raw_cosine, standardised_cosine)
