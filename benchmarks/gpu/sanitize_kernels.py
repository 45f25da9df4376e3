"""Every CUDA kernel of the package once, on small inputs, for compute-sanitizer (memcheck, racecheck):

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/gpu/sanitize_kernels.py

The rasteriser with all channels and fragments (a face, a batch of two topologies with a triangle larger than
the image, and that batch drawn through rows that repeat and reorder its meshes), vertex normals; the fused loss
forward and backward in float32, float16 and bfloat16, with and without text embeddings, with a class that has a
single sample (no positive for the triplet term)."""

import torch

from affectvlm.geometry.cameras import view_cameras
from affectvlm.ops import AffectLoss, contrastive_loss
from affectvlm.ops.raster import CHANNEL_WIDTHS, pack_meshes, render_views, vertex_normals


def rasterise() -> None:
    generator = torch.Generator().manual_seed(0)
    face = torch.rand(300, 3, generator=generator) - 0.5
    faces = torch.randint(0, 300, (500, 3), generator=generator)
    big = torch.tensor([[-5.0, -5.0, 0.0], [5.0, -5.0, 0.0], [0.0, 5.0, 0.0]])
    cameras = view_cameras("frontal,left,right,up").to("cuda")
    channels = tuple(name for name in CHANNEL_WIDTHS if name != "attributes")
    render_views(face.cuda(), faces.cuda(), cameras, 37, channels, return_fragments=True, return_barycentrics=True)
    two_topologies = ([face.cuda(), big.cuda()], [faces.cuda(), torch.tensor([[0, 1, 2]]).cuda()])
    render_views(*two_topologies, cameras, (24, 40), channels + ("attributes",),
                 attributes=[torch.rand(300, 2).cuda(), torch.rand(3, 2).cuda()], cull_backfaces=True)
    render_views(*two_topologies, cameras, 29, channels, rows=torch.tensor([1, 0, 1, 1]), return_fragments=True)
    vertex_normals(pack_meshes(face.cuda(), faces.cuda()), backend="kernel")


def contrast() -> None:
    generator = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        images = torch.randn(70, 48, generator=generator).to("cuda", dtype).requires_grad_()
        texts = torch.randn(33, 48, generator=generator).to("cuda", dtype).requires_grad_()
        labels = torch.cat([torch.randint(0, 6, (69,), generator=generator), torch.tensor([6])]).cuda()
        text_labels = torch.randint(0, 7, (33,), generator=generator).cuda()
        loss = AffectLoss(7).cuda()
        sum(loss(images, labels, texts, text_labels)[1:]).backward()
        sum(contrastive_loss(images, labels, scale=20.0, margin=0.3, num_classes=7)).backward()


if __name__ == "__main__":
    rasterise()
    contrast()
    torch.cuda.synchronize()
    print("every kernel ran")
