"""The explanation map: the carrying of pixel weights onto vertices against a brute-force reference, the
gradient and the occlusion weights it carries, and on a synthetic smile, the regions the smile moved.

Every part is tested where its answer is known: the carrying back exactly against a per-pixel loop on random
weights; the gradient against a score whose gradient is known in closed form, and the region property with
that score (how far the smiling face's views are from the neutral face's), whose gradient is non-zero exactly
where the smile changed what the model sees; the occlusion weights against a loop over squares with a linear
score; `explain` with a real checkpoint against finite differences of the class logit that predict computes.
With the shipped demo model (a trained model has an opinion about faces), the occlusion map of a smile lies
on the regions the smile moved.
"""

import numpy as np
import pytest
import torch

from affectvlm.data.procedural_face import ProceduralFaceModel
from affectvlm.data.synthetic import expression_weights
from affectvlm.data.views import IMAGE_RECIPES, render_model_views
from affectvlm.explain import (Explanation, carry_to_vertices, explain, explain_views, gradient_pixel_weights,
                               heat_map, mesh_fragments, occlusion_pixel_weights, pixel_size)
from affectvlm.geometry.cameras import view_cameras
from affectvlm.geometry.mesh import Mesh
from affectvlm.geometry.normalise import normalise
from affectvlm.predict import DEMO_CHECKPOINT, class_logits, encode_model_views, load_predictor, model_views

VIEWS = ("frontal", "left", "right")


def random_mesh(generator, triangles=40):
    """A triangle soup in front of the cameras, overlapping so that depth testing matters."""
    vertices = torch.rand(triangles * 3, 3, generator=generator) * 1.2 - 0.6
    faces = torch.arange(triangles * 3, dtype=torch.int32).reshape(triangles, 3)
    return vertices, faces


def carried_by_loop(pixel_weights, fragments, faces, num_vertices):
    reference = np.zeros(num_vertices)
    ids, barycentrics = fragments.triangle_ids[0].numpy(), fragments.barycentrics[0].numpy()
    for view, row, column in np.ndindex(*ids.shape):
        triangle = ids[view, row, column]
        if triangle >= 0:
            for corner in range(3):
                reference[faces[triangle, corner]] += (pixel_weights[view, row, column]
                                                       * barycentrics[view, corner, row, column])
    return reference


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_carrying_back_matches_a_per_pixel_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    vertices, faces = random_mesh(generator)
    cameras = view_cameras(VIEWS)
    fragments = mesh_fragments(vertices, faces, cameras, 24)
    pixel_weights = torch.rand(len(VIEWS), 24, 24, generator=generator)
    carried = carry_to_vertices(pixel_weights, fragments, faces, len(vertices))
    reference = carried_by_loop(pixel_weights.numpy(), fragments, faces.numpy(), len(vertices))
    np.testing.assert_allclose(carried.numpy(), reference, rtol=1e-5, atol=1e-6)
    covered = fragments.triangle_ids[0] >= 0
    assert covered.any() and (~covered).any()
    assert carried.sum() == pytest.approx(float(pixel_weights[covered].sum()), rel=1e-5)  # barycentrics sum to 1


def test_pixels_without_a_triangle_carry_nothing():
    generator = torch.Generator().manual_seed(3)
    vertices, faces = random_mesh(generator)
    fragments = mesh_fragments(vertices, faces, view_cameras(VIEWS), 24)
    background = (fragments.triangle_ids[0] < 0).float()
    weights = background * torch.rand(background.shape, generator=generator) * 100
    assert weights.sum() > 0
    assert carry_to_vertices(weights, fragments, faces, len(vertices)).abs().max() == 0


def smile_and_neutral(seed):
    """A synthetic person's neutral face and their smile at intensity 4, in the neutral face's canonical frame
    (one transform for both, so only what the smile moves differs), with no pose or noise."""
    model = ProceduralFaceModel()
    rig = model.rig(model.random_identity(np.random.default_rng(seed)))
    neutral = normalise(Mesh(rig.neutral.astype(np.float32), model.faces), pose="none")
    transform = neutral.metadata["normalise_transform"]
    smile = rig.pose(expression_weights(model, "happiness", 4)) @ transform[:3, :3].T + transform[:3, 3]
    smile = smile.astype(np.float32)
    return smile, neutral.vertices, model.faces


@pytest.mark.parametrize("recipe", list(IMAGE_RECIPES))
def test_a_smile_is_explained_by_the_regions_it_moved(recipe):
    smile, neutral, faces = smile_and_neutral(seed=4)
    cameras, size = view_cameras(VIEWS), 64
    neutral_views = render_model_views(torch.from_numpy(neutral)[None], torch.from_numpy(faces), cameras, size, recipe)

    def distance_from_neutral(images):
        return 0.5 * ((images - neutral_views) ** 2).sum()

    vertex_weights, pixel_weights = explain_views(smile, faces, cameras, size, recipe,
                                                  lambda images: gradient_pixel_weights(images, distance_from_neutral))
    smile_views = render_model_views(torch.from_numpy(smile)[None], torch.from_numpy(faces), cameras, size, recipe)
    # The gradient of that score is the difference of the views, so the pixel map is known exactly.
    torch.testing.assert_close(pixel_weights, (smile_views - neutral_views)[0].abs().sum(dim=1))

    moved, share_by_area = smile_regions(smile, neutral, faces, cameras, size)
    share = float(vertex_weights[moved].sum() / vertex_weights.sum())
    print(f"\n{recipe}: {share:.1%} of the map on the moved regions, which cover {share_by_area:.1%} of the view")
    # Measured over identities 0-9: 99% with the recipes without depth; 85-98% with depth, which is normalised
    # per view, so a smile shifts every depth pixel a little (identity 4, used here, is the lowest of the ten).
    assert share > 0.8 and share > share_by_area + 0.3

    # Drawn, the map spreads over about a pixel's footprint and still marks the moved regions.
    colours = heat_map(Explanation("happiness", vertex_weights, pixel_weights, 1.0, pixel_size(cameras, size)),
                       Mesh(smile, faces))
    assert colours.min() >= 0 and colours.max() == 1
    assert colours[moved].mean() > 3 * colours[~moved].mean()


def smile_regions(smile, neutral, faces, cameras, size) -> tuple[np.ndarray, float]:
    """The vertices the smile moved (mouth, lips and cheeks), and the share of the views' covered pixels they
    take: what a map that ignored the smile would put on them."""
    displacement = np.linalg.norm(smile - neutral, axis=1)
    moved = displacement > 0.01 * displacement.max()
    fragments = mesh_fragments(torch.from_numpy(smile), torch.from_numpy(faces), cameras, size)
    views = cameras.world_to_view.shape[1]
    uniform = carry_to_vertices(torch.ones(views, size, size), fragments, torch.from_numpy(faces), len(smile))
    return moved, float(uniform[moved].sum() / uniform.sum())


def bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """A (S, S) grid of values at the centres of S x S equal squares, interpolated to every pixel's centre
    (clamped at the outer centres)."""
    def neighbours(pixel, pixels, cells):
        at = min(max((pixel + 0.5) * cells / pixels - 0.5, 0), cells - 1)
        low = int(np.floor(at))
        return low, min(low + 1, cells - 1), at - low

    result = np.zeros((height, width))
    for row, column in np.ndindex(height, width):
        i0, i1, a = neighbours(row, height, len(grid))
        j0, j1, b = neighbours(column, width, len(grid))
        result[row, column] = ((1 - a) * (1 - b) * grid[i0, j0] + (1 - a) * b * grid[i0, j1]
                               + a * (1 - b) * grid[i1, j0] + a * b * grid[i1, j1])
    return result


@pytest.mark.parametrize("seed", [0, 1])
def test_occlusion_weighs_each_square_by_the_drop_its_hiding_causes(seed):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(1, 2, 3, 9, 15, generator=generator)  # 3 x 3 squares of 3 x 5 pixels
    images[0, 1, :, 3:6, 5:10] = 0  # a square of background: hiding it drops nothing
    images[0, 0, :, 0:2, 0:3] = 0  # a square partly background: only its face pixels change
    coefficients = torch.randn(2, 3, 9, 15, generator=generator)

    def scores(batch):  # linear: hiding a square drops the score by what it changes, weighed
        return (batch * coefficients).flatten(1).sum(dim=1)

    weights = occlusion_pixel_weights(images, scores, squares=3)
    drops = np.zeros((2, 3, 3))
    for view, i, j in np.ndindex(2, 3, 3):
        square = images[0, view, :, 3 * i:3 * i + 3, 5 * j:5 * j + 5].numpy().astype(np.float64)
        face = square.any(axis=0)
        hidden = square.copy()
        if face.any():
            hidden[:, face] = square[:, face].mean(axis=1, keepdims=True)
        change = (square - hidden) * coefficients[view, :, 3 * i:3 * i + 3, 5 * j:5 * j + 5].numpy()
        drops[view, i, j] = max(change.sum(), 0)
    assert (drops == 0).sum() > 1 and (drops > 0).any()  # rises (weighed 0) and drops occurred
    for view in range(2):
        np.testing.assert_allclose(weights[view].numpy(), bilinear(drops[view], 9, 15), rtol=1e-4, atol=1e-5)
    assert weights[1, 4, 7] == 0  # the background square's centre


@pytest.fixture(scope="module")
def demo_predictor():
    return load_predictor(DEMO_CHECKPOINT)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_demo_model_needs_the_regions_a_smile_moved(demo_predictor, seed):
    smile, neutral, faces = smile_and_neutral(seed)
    happiness = demo_predictor.classes.index("happiness")
    explanation = explain(demo_predictor, Mesh(smile, faces), happiness)
    cameras = view_cameras(demo_predictor.views, projection=demo_predictor.projection)
    moved, share_by_area = smile_regions(smile, neutral, faces, cameras, demo_predictor.image_size)
    share = float(explanation.vertex_weights[moved].sum() / explanation.vertex_weights.sum())
    print(f"\nocclusion: {share:.1%} of the map on the moved regions, which cover {share_by_area:.1%} of the views")
    # Measured with identities 0-5: 75-89 %, 77 and 84 % for these two (the gradient method: 54-58 %) against 53 %.
    assert share > 0.75 and share > share_by_area + 0.2


def test_an_unknown_method_is_refused(demo_predictor):
    smile, _, faces = smile_and_neutral(0)
    with pytest.raises(ValueError, match="unknown explanation method 'saliency'; choose one of occlusion, gradient"):
        explain(demo_predictor, Mesh(smile, faces), 0, method="saliency")


def test_pixel_size_is_the_width_a_pixel_covers_at_the_origin():
    size = 64
    perspective = view_cameras(VIEWS)  # 45 degrees vertical field of view at distance 2.8
    assert pixel_size(perspective, size) == pytest.approx(2 * 2.8 * np.tan(np.radians(22.5)) / size, rel=1e-5)
    orthographic = view_cameras(VIEWS, projection="orthographic")  # half height 1.1
    assert pixel_size(orthographic, size) == pytest.approx(2.2 / size, rel=1e-5)


@pytest.fixture(scope="module")
def predictor(app_checkpoint):
    return load_predictor(app_checkpoint)


def test_explain_differentiates_the_logit_predict_computes(predictor):
    smile, _, faces = smile_and_neutral(seed=5)
    mesh = normalise(Mesh(smile, faces))
    vertices, faces_t = torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces)
    images = model_views(predictor, [vertices], [faces_t])
    with torch.no_grad():
        logits = class_logits(predictor, encode_model_views(predictor, images))[0]
    predicted = int(logits.argmax())
    explanation = explain(predictor, mesh, predicted, method="gradient")
    assert explanation.class_name == predictor.classes[predicted]

    # Finite differences of the logit at the pixels with the largest weights, channel by channel.
    flat = explanation.pixel_weights.flatten()
    for index in flat.topk(3).indices.tolist():
        view, row, column = np.unravel_index(index, explanation.pixel_weights.shape)
        slopes = []
        for channel in range(3):
            step = torch.zeros_like(images)
            step[0, view, channel, row, column] = 1e-2
            with torch.no_grad():
                ahead = class_logits(predictor, encode_model_views(predictor, images + step))[0, predicted]
                behind = class_logits(predictor, encode_model_views(predictor, images - step))[0, predicted]
            slopes.append(float(ahead - behind) / 2e-2)
        assert sum(map(abs, slopes)) == pytest.approx(float(flat[index]), rel=0.05, abs=1e-4)

    covered = mesh_fragments(vertices, faces_t, view_cameras(predictor.views, projection=predictor.projection),
                             predictor.image_size).triangle_ids[0] >= 0
    assert torch.equal(covered, images[0].amax(dim=1) > 0)  # the fragments are the model views' pixels
    assert explanation.vertex_weights.min() >= 0
    assert explanation.vertex_weights.sum() == pytest.approx(float(explanation.pixel_weights[covered].sum()),
                                                             rel=1e-4)
    assert explanation.on_face == pytest.approx(float(explanation.pixel_weights[covered].sum()
                                                      / explanation.pixel_weights.sum()), rel=1e-4)
