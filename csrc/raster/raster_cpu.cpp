// CPU kernel: (mesh, view) images handed out to threads one at a time. Per image the mesh's vertices are
// projected once, each triangle walks its pixel bounding box with incremental integer edge functions into a
// z-buffer that stays in the thread's cache, a resolve pass shades the winning fragments, and the depth
// channel is rescaled.
//
// Plain threads that block when out of work, rather than OpenMP: libgomp's default spin-waiting stalls a
// call for whole scheduler time slices when the cores are shared (on the 2-core CI machine under load, a
// 3-view call took 24 ms median with OpenMP against 1.8 ms on one thread).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>
#include <vector>

#include "raster/raster.h"
#include "raster/raster_common.h"

namespace affectvlm {
namespace raster {
namespace {

// A thread is started only for this many images or more: waking one on a busy core can cost a scheduler
// time slice (milliseconds), more than a few images take to render.
constexpr int64_t kMinImagesPerThread = 8;

// Scratch reused across the images a thread renders.
struct ImageScratch {
  std::vector<ScreenVertex> screen;
  std::vector<uint64_t> zbuffer;
};

void project_mesh(const RasterParams& p, const RasterInputs& in, const MeshRange& mesh, const float* clip,
                  const float* view, std::vector<ScreenVertex>& screen) {
  screen.resize(static_cast<size_t>(mesh.vertex_count));
  const float* vertices = in.vertices + mesh.vertex_start * 3;
  for (int64_t v = 0; v < mesh.vertex_count; ++v) {
    screen[v] = project_vertex(clip, view, vertices + v * 3, p.width, p.height);
  }
}

void rasterize_triangle(const RasterParams& p, const Triangle& t, const float z[3], uint32_t triangle,
                        uint64_t* zbuffer) {
  // Edge s changes by step_x[s] per pixel to the right.
  int64_t step_x[3];
  for (int s = 0; s < 3; ++s) step_x[s] = -(t.y[(s + 2) % 3] - t.y[(s + 1) % 3]) * kSubpixelScale;
  const int64_t x0 = pixel_centre(t.col0);
  for (int row = t.row0; row <= t.row1; ++row) {
    const int64_t y = pixel_centre(row);
    int64_t e0 = edge_function(t, 0, x0, y), e1 = edge_function(t, 1, x0, y), e2 = edge_function(t, 2, x0, y);
    uint64_t* line = zbuffer + int64_t(row) * p.width;
    for (int col = t.col0; col <= t.col1; ++col, e0 += step_x[0], e1 += step_x[1], e2 += step_x[2]) {
      if (!inside(t, e0, e1, e2)) continue;
      float w[3];
      screen_weights(t, e0, e1, e2, w);
      const uint64_t key = depth_key(fragment_z01(w, z[0], z[1], z[2]), triangle);
      line[col] = std::min(line[col], key);
    }
  }
}

// Background values for the whole image, plane by plane (what write_background does pixel by pixel).
void clear_image(const RasterParams& p, const RasterOutputs& out, int64_t image) {
  const int64_t plane = int64_t(p.height) * p.width;
  std::fill_n(out.images + image * p.num_channels * plane, p.num_channels * plane, 0.0f);
  std::fill_n(out.triangle_ids + image * plane, plane, -1);
  if (out.barycentrics) std::fill_n(out.barycentrics + image * 3 * plane, 3 * plane, 0.0f);
}

void normalise_image_depth(const RasterParams& p, const RasterOutputs& out, int64_t image) {
  const int64_t plane = int64_t(p.height) * p.width;
  float* depth = out.images + (image * p.num_channels + p.depth_channel) * plane;
  const int32_t* ids = out.triangle_ids + image * plane;
  float nearest = INFINITY, farthest = -INFINITY;
  for (int64_t pixel = 0; pixel < plane; ++pixel) {
    if (ids[pixel] < 0) continue;
    nearest = std::min(nearest, depth[pixel]);
    farthest = std::max(farthest, depth[pixel]);
  }
  for (int64_t pixel = 0; pixel < plane; ++pixel) {
    if (ids[pixel] >= 0) depth[pixel] = normalised_depth(depth[pixel], nearest, farthest);
  }
}

void render_image(const RasterParams& p, const RasterInputs& in, const RasterOutputs& out, int64_t image,
                  ImageScratch& scratch) {
  const int64_t mesh_index = image / p.num_views;
  const MeshRange mesh = reinterpret_cast<const MeshRange*>(in.meshes)[mesh_index];
  const int64_t camera = camera_index(p, mesh_index, image % p.num_views);
  const float* clip = in.world_to_clip + camera * 16;
  const float* view = in.world_to_view + camera * 16;
  project_mesh(p, in, mesh, clip, view, scratch.screen);

  const int64_t plane = int64_t(p.height) * p.width;
  scratch.zbuffer.assign(static_cast<size_t>(plane), kEmptyKey);
  const int32_t* faces = in.faces + mesh.face_start * 3;
  for (int64_t f = 0; f < mesh.face_count; ++f) {
    const ScreenVertex& a = scratch.screen[faces[f * 3]];
    const ScreenVertex& b = scratch.screen[faces[f * 3 + 1]];
    const ScreenVertex& c = scratch.screen[faces[f * 3 + 2]];
    Triangle t;
    if (!setup_triangle(a, b, c, p.cull_backfaces, p.width, p.height, &t)) continue;
    float z[3];
    in_slot_order(t, a.z01, b.z01, c.z01, z);
    rasterize_triangle(p, t, z, static_cast<uint32_t>(f), scratch.zbuffer.data());
  }

  clear_image(p, out, image);
  for (int64_t pixel = 0; pixel < plane; ++pixel) {
    const uint64_t key = scratch.zbuffer[pixel];
    if (key == kEmptyKey) continue;
    const uint32_t triangle = key_triangle(key);
    int64_t corner_vertex[3];
    ScreenVertex corner_screen[3];
    for (int i = 0; i < 3; ++i) {
      const int32_t local = faces[int64_t(triangle) * 3 + i];
      corner_vertex[i] = mesh.vertex_start + local;
      corner_screen[i] = scratch.screen[local];
    }
    write_fragment(p, in, out, image, pixel, triangle, corner_vertex, corner_screen, view);
  }
  if (p.depth_channel >= 0 && p.normalise_depth) normalise_image_depth(p, out, image);
}


// Runs work(claim) on up to num_threads threads, the caller's among them; each claims item numbers with
// claim() until one is >= count. A thread is started only per `min_items_per_thread` items.
template <typename Work>
void share_out(int64_t count, int num_threads, int64_t min_items_per_thread, Work work) {
  std::atomic<int64_t> next{0};
  auto claim = [&next] { return next++; };
  const int64_t threads_worth_starting = std::max<int64_t>(count / min_items_per_thread, 1);
  const int64_t helpers = std::min<int64_t>(std::max(num_threads, 1), threads_worth_starting) - 1;
  std::vector<std::thread> threads;
  for (int64_t t = 0; t < helpers; ++t) threads.emplace_back([&] { work(claim); });
  work(claim);
  for (std::thread& thread : threads) thread.join();
}

void mesh_vertex_normals(const float* vertices, const int32_t* faces, const MeshRange& mesh, float* normals) {
  float* own = normals + mesh.vertex_start * 3;
  std::fill_n(own, mesh.vertex_count * 3, 0.0f);
  const float* own_vertices = vertices + mesh.vertex_start * 3;
  for (int64_t f = mesh.face_start; f < mesh.face_start + mesh.face_count; ++f) {
    const float* a = own_vertices + faces[f * 3] * 3;
    const float* b = own_vertices + faces[f * 3 + 1] * 3;
    const float* c = own_vertices + faces[f * 3 + 2] * 3;
    const float ab[3] = {b[0] - a[0], b[1] - a[1], b[2] - a[2]};
    const float ac[3] = {c[0] - a[0], c[1] - a[1], c[2] - a[2]};
    const float normal[3] = {ab[1] * ac[2] - ab[2] * ac[1], ab[2] * ac[0] - ab[0] * ac[2],
                             ab[0] * ac[1] - ab[1] * ac[0]};  // twice the area, so larger faces weigh more
    for (int corner = 0; corner < 3; ++corner) {
      float* target = own + faces[f * 3 + corner] * 3;
      for (int axis = 0; axis < 3; ++axis) target[axis] += normal[axis];
    }
  }
  for (int64_t v = 0; v < mesh.vertex_count; ++v) {
    float* n = own + v * 3;
    const float length = std::sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]);
    const float scale = length > 0.0f ? 1.0f / length : 0.0f;
    for (int axis = 0; axis < 3; ++axis) n[axis] *= scale;
  }
}

}  // namespace

void render_views_cpu(const RasterParams& params, const RasterInputs& inputs, const RasterOutputs& outputs,
                      int num_threads) {
  const int64_t images = params.num_meshes * params.num_views;
  share_out(images, num_threads, kMinImagesPerThread, [&](auto claim) {
    ImageScratch scratch;
    for (int64_t image = claim(); image < images; image = claim()) {
      render_image(params, inputs, outputs, image, scratch);
    }
  });
}

void vertex_normals_cpu(const float* vertices, const int32_t* faces, const int64_t* meshes, int64_t num_meshes,
                        float* normals, int num_threads) {
  const auto* rows = reinterpret_cast<const MeshRange*>(meshes);
  share_out(num_meshes, num_threads, 1, [&](auto claim) {
    for (int64_t mesh = claim(); mesh < num_meshes; mesh = claim()) {
      mesh_vertex_normals(vertices, faces, rows[mesh], normals);
    }
  });
}

}  // namespace raster
}  // namespace affectvlm
