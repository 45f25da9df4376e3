#include "raster/raster_binding.h"

#include <algorithm>
#include <iterator>
#include <optional>
#include <thread>

#include "common.h"
#include "raster/raster.h"
#include "raster/raster_common.h"
#include "tensor.h"

namespace py = pybind11;

namespace affectvlm {
namespace raster {
namespace {

constexpr int64_t kMaxImageSide = 16384;

std::string channel_names() {
  std::string names;
  for (const Channel& channel : kChannels) names += (names.empty() ? "" : ", ") + std::string(channel.name);
  return names;
}

// Channel names in the order given; each starts where the previous one ends.
void plan_channels(const std::vector<std::string>& channels, int num_attributes, RasterParams* p) {
  int next = 0;
  for (const std::string& name : channels) {
    const Channel* channel = std::find_if(std::begin(kChannels), std::end(kChannels),
                                          [&](const Channel& c) { return name == c.name; });
    if (channel == std::end(kChannels)) {
      throw py::value_error("channels: unknown channel '" + name + "'; expected one of " + channel_names());
    }
    int& start = p->*(channel->start);
    if (start >= 0) throw py::value_error("channels: '" + name + "' is listed twice");
    start = next;
    next += channel->width == kPerAttribute ? num_attributes : channel->width;
  }
  p->num_channels = next;
  p->num_attributes = p->attribute_channel >= 0 ? num_attributes : 0;
}

std::optional<ArrayView> optional_view(const py::object& obj, const std::string& name) {
  if (obj.is_none()) return std::nullopt;
  return ArrayView::from_python(obj, name);
}

// Every mesh row must address existing vertices and faces, and its faces its own vertices.
void check_meshes_on_cpu(const ArrayView& meshes, const ArrayView& faces, int64_t num_vertices) {
  const auto* rows = meshes.data_as<const MeshRange>();
  const int64_t num_faces = faces.size(0);
  MeshRange checked{-1, -1, -1, -1};
  for (int64_t b = 0; b < meshes.size(0); ++b) {
    const MeshRange& m = rows[b];
    const std::string mesh = "meshes row " + std::to_string(b);
    if (m.vertex_start < 0 || m.vertex_count < 1 || m.vertex_count > num_vertices - m.vertex_start) {
      throw py::value_error(mesh + ": vertices [" + std::to_string(m.vertex_start) + ", +" +
                            std::to_string(m.vertex_count) + ") must be a non-empty range of the " +
                            std::to_string(num_vertices) + " vertices");
    }
    if (m.face_start < 0 || m.face_count < 1 || m.face_count > num_faces - m.face_start) {
      throw py::value_error(mesh + ": faces [" + std::to_string(m.face_start) + ", +" +
                            std::to_string(m.face_count) + ") must be a non-empty range of the " +
                            std::to_string(num_faces) + " faces");
    }
    // Meshes of one topology repeat the same faces and vertex count: check them once.
    if (m.face_start == checked.face_start && m.face_count == checked.face_count &&
        m.vertex_count == checked.vertex_count) {
      continue;
    }
    faces.require_values_in_range(0, m.vertex_count, m.face_start * 3, (m.face_start + m.face_count) * 3);
    checked = m;
  }
}

void require_disjoint_vertex_ranges(const ArrayView& meshes) {
  const auto* rows = meshes.data_as<const MeshRange>();
  for (int64_t b = 1; b < meshes.size(0); ++b) {
    if (rows[b].vertex_start < rows[b - 1].vertex_start + rows[b - 1].vertex_count) {
      throw py::value_error("meshes row " + std::to_string(b) +
                            ": vertex ranges must follow each other without overlapping");
    }
  }
}

void require_image_shape(const ArrayView& view, int64_t meshes, int64_t views, int64_t channels, int64_t height,
                         int64_t width) {
  view.require_shape(channels < 0 ? std::vector<int64_t>{meshes, views, height, width}
                                  : std::vector<int64_t>{meshes, views, channels, height, width})
      .require_contiguous()
      .require_writable();
}

}  // namespace

void render_views_binding(py::handle vertices_obj, py::handle faces_obj, py::handle meshes_obj,
                          py::handle world_to_clip_obj, py::handle world_to_view_obj, py::handle images_obj,
                          py::object triangle_ids_obj, const std::vector<std::string>& channels,
                          py::object normals_obj, py::object attributes_obj, py::object barycentrics_obj,
                          py::object zbuffer_obj, bool normalise_depth, bool cull_backfaces,
                          std::array<float, 3> light, float ambient, int num_threads, uintptr_t stream) {
  const ArrayView vertices = ArrayView::from_python(vertices_obj, "vertices");
  vertices.require_dtype({DType::Float32}).require_shape({kAnySize, 3}).require_contiguous();
  const Device device = vertices.device();
  const int64_t num_vertices = vertices.size(0);
  if (num_vertices == 0) throw py::value_error("vertices is empty");

  const ArrayView faces = ArrayView::from_python(faces_obj, "faces");
  faces.require_dtype({DType::Int32}).require_shape({kAnySize, 3}).require_contiguous().require_device(device);
  if (faces.size(0) == 0) throw py::value_error("faces is empty");

  const ArrayView meshes = ArrayView::from_python(meshes_obj, "meshes");
  meshes.require_dtype({DType::Int64}).require_shape({kAnySize, 4}).require_contiguous().require_device(device);
  const int64_t num_meshes = meshes.size(0);
  if (num_meshes == 0) throw py::value_error("meshes is empty: nothing to render");

  const ArrayView world_to_clip = ArrayView::from_python(world_to_clip_obj, "world_to_clip");
  world_to_clip.require_dtype({DType::Float32}).require_shape({kAnySize, kAnySize, 4, 4}).require_contiguous()
      .require_device(device);
  const int64_t camera_sets = world_to_clip.size(0);
  const int64_t num_views = world_to_clip.size(1);
  if (camera_sets != 1 && camera_sets != num_meshes) {
    throw py::value_error("world_to_clip must hold cameras for 1 or " + std::to_string(num_meshes) +
                          " meshes in dimension 0, got " + std::to_string(camera_sets));
  }
  if (num_views == 0) throw py::value_error("world_to_clip holds zero views");
  const ArrayView world_to_view = ArrayView::from_python(world_to_view_obj, "world_to_view");
  world_to_view.require_dtype({DType::Float32}).require_shape({camera_sets, num_views, 4, 4}).require_contiguous()
      .require_device(device);

  const std::optional<ArrayView> attributes = optional_view(attributes_obj, "attributes");
  if (attributes) {
    attributes->require_dtype({DType::Float32}).require_shape({num_vertices, kAnySize}).require_contiguous()
        .require_device(device);
  }
  RasterParams p;
  plan_channels(channels, attributes ? static_cast<int>(attributes->size(1)) : 0, &p);
  if (p.attribute_channel >= 0 && (!attributes || attributes->size(1) == 0)) {
    throw py::value_error("channels: 'attributes' needs an attributes array with at least one column");
  }
  const std::optional<ArrayView> normals = optional_view(normals_obj, "normals");
  if (shades_normals(p)) {
    if (!normals) throw py::value_error("normals are needed by the normal, normal_rgb and shading channels");
    normals->require_dtype({DType::Float32}).require_shape({num_vertices, 3}).require_contiguous().require_device(device);
  }

  const ArrayView images = ArrayView::from_python(images_obj, "images");
  images.require_dtype({DType::Float32}).require_ndim(5).require_device(device);
  const int64_t height = images.size(3), width = images.size(4);
  if (height < 1 || width < 1 || height > kMaxImageSide || width > kMaxImageSide) {
    throw py::value_error("images must be between 1 and " + std::to_string(kMaxImageSide) +
                          " pixels high and wide, got " + std::to_string(height) + " x " + std::to_string(width));
  }
  require_image_shape(images, num_meshes, num_views, p.num_channels, height, width);
  const std::optional<ArrayView> triangle_ids = optional_view(triangle_ids_obj, "triangle_ids");
  if (triangle_ids) {
    triangle_ids->require_dtype({DType::Int32}).require_device(device);
    require_image_shape(*triangle_ids, num_meshes, num_views, -1, height, width);
  }
  const std::optional<ArrayView> barycentrics = optional_view(barycentrics_obj, "barycentrics");
  if (barycentrics) {
    barycentrics->require_dtype({DType::Float32}).require_device(device);
    require_image_shape(*barycentrics, num_meshes, num_views, 3, height, width);
  }
  const std::optional<ArrayView> zbuffer = optional_view(zbuffer_obj, "zbuffer");
  if (zbuffer) {
    zbuffer->require_dtype({DType::Int64}).require_device(device);
    require_image_shape(*zbuffer, num_meshes, num_views, -1, height, width);
  }

  p.num_meshes = num_meshes;
  p.num_views = num_views;
  p.height = static_cast<int>(height);
  p.width = static_cast<int>(width);
  p.face_rows = faces.size(0);
  p.cameras_per_mesh = camera_sets == num_meshes && num_meshes > 1;
  p.normalise_depth = normalise_depth;
  p.cull_backfaces = cull_backfaces;
  for (int a = 0; a < 3; ++a) p.light[a] = light[a];
  p.ambient = ambient;

  RasterInputs in;
  in.vertices = vertices.data_as<const float>();
  in.normals = normals ? normals->data_as<const float>() : nullptr;
  in.attributes = attributes ? attributes->data_as<const float>() : nullptr;
  in.faces = faces.data_as<const int32_t>();
  in.meshes = meshes.data_as<const int64_t>();
  in.world_to_clip = world_to_clip.data_as<const float>();
  in.world_to_view = world_to_view.data_as<const float>();
  RasterOutputs out;
  out.images = images.data_as<float>();
  out.triangle_ids = triangle_ids ? triangle_ids->data_as<int32_t>() : nullptr;
  out.barycentrics = barycentrics ? barycentrics->data_as<float>() : nullptr;
  out.zbuffer = zbuffer ? zbuffer->data_as<int64_t>() : nullptr;

  if (device.type == DeviceType::CPU) {
    check_meshes_on_cpu(meshes, faces, num_vertices);
    py::gil_scoped_release release;
    const int threads = num_threads > 0 ? num_threads : static_cast<int>(std::thread::hardware_concurrency());
    render_views_cpu(p, in, out, threads);
    return;
  }
#ifdef AFFECTVLM_WITH_CUDA
  // Values on the GPU cannot be read here; affectvlm.ops.raster checks the meshes and faces before calling.
  if (!zbuffer) throw py::value_error("zbuffer (B, K, H, W) int64 workspace is needed on CUDA");
  if (!triangle_ids) throw py::value_error("triangle_ids (B, K, H, W) int32 are needed on CUDA");
  py::gil_scoped_release release;
  render_views_cuda(p, in, out, reinterpret_cast<void*>(stream));
#else
  (void)stream;
  throw py::value_error(no_cuda_kernels_message("vertices are on " + device_name(device)));
#endif
}

py::dict raster_channels() {
  py::dict widths;
  for (const Channel& channel : kChannels) {
    widths[channel.name] = channel.width == kPerAttribute ? py::none() : py::object(py::int_(channel.width));
  }
  return widths;
}

void vertex_normals_binding(py::handle vertices_obj, py::handle faces_obj, py::handle meshes_obj,
                            py::handle normals_obj, int num_threads) {
  const ArrayView vertices = ArrayView::from_python(vertices_obj, "vertices");
  const Device cpu{DeviceType::CPU, 0};
  vertices.require_dtype({DType::Float32}).require_shape({kAnySize, 3}).require_contiguous().require_device(cpu);
  const ArrayView faces = ArrayView::from_python(faces_obj, "faces");
  faces.require_dtype({DType::Int32}).require_shape({kAnySize, 3}).require_contiguous().require_device(cpu);
  const ArrayView meshes = ArrayView::from_python(meshes_obj, "meshes");
  meshes.require_dtype({DType::Int64}).require_shape({kAnySize, 4}).require_contiguous().require_device(cpu);
  const ArrayView normals = ArrayView::from_python(normals_obj, "normals");
  normals.require_dtype({DType::Float32}).require_shape({vertices.size(0), 3}).require_contiguous().require_writable()
      .require_device(cpu);
  check_meshes_on_cpu(meshes, faces, vertices.size(0));
  require_disjoint_vertex_ranges(meshes);
  py::gil_scoped_release release;
  vertex_normals_cpu(vertices.data_as<const float>(), faces.data_as<const int32_t>(), meshes.data_as<const int64_t>(),
                     meshes.size(0), normals.data_as<float>(), num_threads > 0 ? num_threads : 1);
}

}  // namespace raster
}  // namespace affectvlm
