"""The README's pictures: written as PNGs of the expected size, with faces in every panel."""

import matplotlib.image
import numpy as np
import pytest

from affectvlm.preview import augmentation_grid, expression_grid, holes_grid, main, view_grid


def panels(image, count):
    return np.array_split(image[..., :3], count, axis=1)


def test_expression_grid_shows_seven_faces(tmp_path):
    image = matplotlib.image.imread(expression_grid(tmp_path / "expressions.png", dpi=30, size=64))
    assert image.shape[:2] == (84, 14 * 30)  # 7 panels of 2 x 2.8 inches at 30 dpi
    for panel in panels(image, 7):
        skin = (np.abs(panel - [0.93, 0.78, 0.68]).max(axis=-1) < 0.5) & (panel.min(axis=-1) < 0.95)
        assert skin.mean() > 0.05  # a shaded face, not an empty white panel


def test_view_grid_shows_the_face_in_every_view(tmp_path):
    image = matplotlib.image.imread(view_grid(tmp_path / "views.png", dpi=20, size=48))
    shading_row = image[: image.shape[0] // 3]
    for panel in panels(shading_row, 3):
        grey = panel.mean(axis=-1)
        # Shaded face pixels: neither the black image background nor the white figure margin.
        assert ((grey > 0.3) & (grey < 0.97)).mean() > 0.05


def test_command_line_names_the_picture(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["portraits", str(tmp_path / "x.png")])
    assert "invalid choice: 'portraits'" in capsys.readouterr().err


def test_augmentation_grid_shows_the_face_in_every_panel(tmp_path):
    image = matplotlib.image.imread(augmentation_grid(tmp_path / "augmentation.png", dpi=20, size=48))
    for band in np.array_split(image[..., :3], 3, axis=0):  # presets, jittered, augmented
        for panel in panels(band, 3):
            grey = panel.mean(axis=-1)
            assert ((grey > 0.3) & (grey < 0.97)).mean() > 0.05  # a coloured face, not an empty panel


def test_holes_grid_shows_the_face_in_every_panel_and_the_background_only_through_open_holes(tmp_path):
    image = matplotlib.image.imread(holes_grid(tmp_path / "holes.png"))
    whole, opened, closed = panels(image, 3)
    for panel in (whole, opened, closed):
        grey = panel.mean(axis=-1)
        assert ((grey > 0.3) & (grey < 0.97)).mean() > 0.05
    background = lambda panel: (panel.max(axis=-1) < 0.05).sum()  # the black behind the face
    assert background(opened) > background(whole) + 200 and abs(background(closed) - background(whole)) < 50
