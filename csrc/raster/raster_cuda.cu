// CUDA kernels: a depth-test pass with one thread per (image, triangle) that keeps the smallest packed
// (depth, triangle id) key per pixel with a 64-bit atomicMin, so the result does not depend on thread order,
// then a resolve pass with one thread per pixel that shades the winning fragment, then one block per image
// rescales the depth channel.
//
// Face meshes have triangles of about a pixel at the sizes CLIP takes (224 x 224), so a thread walks its
// triangle's bounding box itself; there is no binning of large triangles, which makes meshes of few large
// triangles (a plane or a cube filling the image) correct but slow.
#include <cuda_runtime_api.h>

#include <algorithm>

#include "raster/raster.h"
#include "raster/raster_common.h"

namespace affectvlm {
namespace raster {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxTriangleBlocksPerImage = 128;
constexpr int64_t kMaxGridY = 65535;

__device__ ScreenVertex project_packed_vertex(const RasterInputs& in, const RasterParams& p, int64_t vertex,
                                              const float* clip, const float* view) {
  return project_vertex(clip, view, in.vertices + vertex * 3, p.width, p.height);
}

__global__ void depth_test_kernel(RasterParams p, RasterInputs in, unsigned long long* zbuffer) {
  const int64_t images = p.num_meshes * p.num_views;
  const int64_t plane = int64_t(p.height) * p.width;
  for (int64_t image = blockIdx.y; image < images; image += gridDim.y) {
    const int64_t mesh_index = image / p.num_views;
    const MeshRange mesh = reinterpret_cast<const MeshRange*>(in.meshes)[mesh_index];
    const int64_t camera = camera_index(p, mesh_index, image % p.num_views);
    const float* clip = in.world_to_clip + camera * 16;
    const float* view = in.world_to_view + camera * 16;
    unsigned long long* image_zbuffer = zbuffer + image * plane;
    for (int64_t f = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; f < mesh.face_count;
         f += int64_t(gridDim.x) * blockDim.x) {
      const int32_t* face = in.faces + (mesh.face_start + f) * 3;
      ScreenVertex corner[3];
      for (int i = 0; i < 3; ++i) corner[i] = project_packed_vertex(in, p, mesh.vertex_start + face[i], clip, view);
      Triangle t;
      if (!setup_triangle(corner[0], corner[1], corner[2], p.cull_backfaces, p.width, p.height, &t)) continue;
      float z[3];
      in_slot_order(t, corner[0].z01, corner[1].z01, corner[2].z01, z);
      for (int row = t.row0; row <= t.row1; ++row) {
        const int64_t y = pixel_centre(row);
        for (int col = t.col0; col <= t.col1; ++col) {
          const int64_t x = pixel_centre(col);
          const int64_t e0 = edge_function(t, 0, x, y), e1 = edge_function(t, 1, x, y),
                        e2 = edge_function(t, 2, x, y);
          if (!inside(t, e0, e1, e2)) continue;
          float w[3];
          screen_weights(t, e0, e1, e2, w);
          const uint64_t key = depth_key(fragment_z01(w, z[0], z[1], z[2]), static_cast<uint32_t>(f));
          if (key != kEmptyKey) atomicMin(image_zbuffer + int64_t(row) * p.width + col, key);
        }
      }
    }
  }
}

__global__ void resolve_kernel(RasterParams p, RasterInputs in, RasterOutputs out) {
  const int64_t images = p.num_meshes * p.num_views;
  const int64_t plane = int64_t(p.height) * p.width;
  const int64_t pixel = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pixel >= plane) return;
  for (int64_t image = blockIdx.y; image < images; image += gridDim.y) {
    const uint64_t key = static_cast<uint64_t>(out.zbuffer[image * plane + pixel]);
    if (key == kEmptyKey) {
      write_background(p, out, image, pixel);
      continue;
    }
    const int64_t mesh_index = image / p.num_views;
    const MeshRange mesh = reinterpret_cast<const MeshRange*>(in.meshes)[mesh_index];
    const int64_t camera = camera_index(p, mesh_index, image % p.num_views);
    const float* clip = in.world_to_clip + camera * 16;
    const float* view = in.world_to_view + camera * 16;
    const uint32_t triangle = key_triangle(key);
    const int32_t* face = in.faces + (mesh.face_start + int64_t(triangle)) * 3;
    int64_t corner_vertex[3];
    ScreenVertex corner_screen[3];
    for (int i = 0; i < 3; ++i) {
      corner_vertex[i] = mesh.vertex_start + face[i];
      corner_screen[i] = project_packed_vertex(in, p, corner_vertex[i], clip, view);
    }
    write_fragment(p, in, out, image, pixel, triangle, corner_vertex, corner_screen, view);
  }
}

// One block per image: the range of distances over the covered pixels, then each rescaled.
__global__ void normalise_depth_kernel(RasterParams p, RasterOutputs out) {
  __shared__ float nearest_of[kThreads], farthest_of[kThreads];
  const int64_t images = p.num_meshes * p.num_views;
  const int64_t plane = int64_t(p.height) * p.width;
  for (int64_t image = blockIdx.x; image < images; image += gridDim.x) {
    float* depth = out.images + (image * p.num_channels + p.depth_channel) * plane;
    const int32_t* ids = out.triangle_ids + image * plane;
    float nearest = INFINITY, farthest = -INFINITY;
    for (int64_t pixel = threadIdx.x; pixel < plane; pixel += blockDim.x) {
      if (ids[pixel] < 0) continue;
      nearest = fminf(nearest, depth[pixel]);
      farthest = fmaxf(farthest, depth[pixel]);
    }
    nearest_of[threadIdx.x] = nearest;
    farthest_of[threadIdx.x] = farthest;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
      if (threadIdx.x < half) {
        nearest_of[threadIdx.x] = fminf(nearest_of[threadIdx.x], nearest_of[threadIdx.x + half]);
        farthest_of[threadIdx.x] = fmaxf(farthest_of[threadIdx.x], farthest_of[threadIdx.x + half]);
      }
      __syncthreads();
    }
    nearest = nearest_of[0];
    farthest = farthest_of[0];
    for (int64_t pixel = threadIdx.x; pixel < plane; pixel += blockDim.x) {
      if (ids[pixel] >= 0) depth[pixel] = normalised_depth(depth[pixel], nearest, farthest);
    }
    __syncthreads();  // the shared arrays are reused by the next image
  }
}

void check(cudaError_t status, const char* step) { check_cuda(status, "render_views", step); }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

// The host cannot read mesh sizes from the GPU, so the depth test's grid is sized by the rows of `faces`
// (a bound on every mesh's face count), capped, with blocks striding over each mesh's faces.
void render_views_cuda(const RasterParams& params, const RasterInputs& inputs, const RasterOutputs& outputs,
                       void* stream_handle) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  const int64_t images = params.num_meshes * params.num_views;
  const int64_t plane = int64_t(params.height) * params.width;
  const int64_t packed_faces = params.face_rows;
  auto* zbuffer = reinterpret_cast<unsigned long long*>(outputs.zbuffer);

  check(cudaMemsetAsync(zbuffer, 0xff, images * plane * sizeof(uint64_t), stream), "clearing the z-buffer");
  const dim3 depth_grid(static_cast<unsigned>(std::min(ceil_div(packed_faces, kThreads), kMaxTriangleBlocksPerImage)),
                        static_cast<unsigned>(std::min(images, kMaxGridY)));
  depth_test_kernel<<<depth_grid, kThreads, 0, stream>>>(params, inputs, zbuffer);
  check(cudaGetLastError(), "the depth test kernel");

  const dim3 resolve_grid(static_cast<unsigned>(ceil_div(plane, kThreads)),
                          static_cast<unsigned>(std::min(images, kMaxGridY)));
  resolve_kernel<<<resolve_grid, kThreads, 0, stream>>>(params, inputs, outputs);
  check(cudaGetLastError(), "the resolve kernel");

  if (params.depth_channel >= 0 && params.normalise_depth) {
    normalise_depth_kernel<<<static_cast<unsigned>(std::min(images, kMaxGridY)), kThreads, 0, stream>>>(params,
                                                                                                      outputs);
    check(cudaGetLastError(), "the depth normalisation kernel");
  }
}

}  // namespace raster
}  // namespace affectvlm
