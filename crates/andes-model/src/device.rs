//! Choosing the compute device from a user's `--device` string.

use burn::tensor::Device;

use crate::error::ModelError;

/// Parses `cpu`, `cuda[:N]`, `wgpu[:N]` or `vulkan[:N]` into a Burn device; a backend not compiled into
/// this build is an error naming the cargo feature that enables it.
pub fn parse_device(spec: &str) -> Result<Device, ModelError> {
    let (kind, index) = match spec.split_once(':') {
        Some((kind, index)) => {
            let index: usize = index.parse().map_err(|_| {
                ModelError::InvalidInput(format!(
                    "device `{spec}`: `{index}` is not a device index"
                ))
            })?;
            (kind, Some(index))
        }
        None => (spec, None),
    };
    match kind {
        "cpu" => Ok(Device::flex()),
        "wgpu" | "vulkan" => gpu_device(kind, index),
        "cuda" => cuda_device(index),
        other => Err(ModelError::InvalidInput(format!(
            "device `{other}` is unknown; expected cpu, cuda[:N], wgpu[:N] or vulkan[:N]"
        ))),
    }
}

/// Whether decoding on the device `spec` (as [`parse_device`] reads it) gains from replaying
/// each step as one captured device graph: true on cuda, the backend whose graphs replay in
/// one launch; elsewhere the step would rerun operation by operation over a fixed cache.
pub fn replays_graphs(spec: &str) -> bool {
    spec.split(':').next() == Some("cuda")
}

/// The devices of a data-parallel run: one replica of the model on each.
#[derive(Debug, Clone)]
pub struct DeviceSet {
    /// One per replica, in rank order.
    pub devices: Vec<Device>,
    /// Whether Burn's collective all-reduce (NCCL) can sum gradients across them: true for
    /// CUDA devices, the only Burn backend with collectives in 0.22. Elsewhere the
    /// gradients are summed by moving them to the first device and back.
    pub collective: bool,
}

/// Parses a comma-separated device list (`cuda:0,cuda:1`, `cpu,cpu`), or one device. Every
/// entry must be of one kind: replicas of one run exchange gradients over one transport.
pub fn parse_devices(spec: &str) -> Result<DeviceSet, ModelError> {
    let entries: Vec<&str> = spec.split(',').map(str::trim).collect();
    let kind = |entry: &str| entry.split(':').next().unwrap_or_default().to_string();
    let first_kind = kind(entries[0]);
    if let Some(other) = entries.iter().find(|e| kind(e) != first_kind) {
        return Err(ModelError::InvalidInput(format!(
            "devices `{spec}`: `{other}` is not a {first_kind} device; a data-parallel run \
             uses devices of one kind"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(repeated) = entries.iter().find(|e| **e != "cpu" && !seen.insert(**e)) {
        return Err(ModelError::InvalidInput(format!(
            "devices `{spec}`: `{repeated}` is listed twice"
        )));
    }
    Ok(DeviceSet {
        devices: entries
            .iter()
            .map(|entry| parse_device(entry))
            .collect::<Result<_, _>>()?,
        collective: first_kind == "cuda" && entries.len() > 1,
    })
}

/// Expands a device count into a list of that many devices of `spec`'s kind: `2` with
/// `cuda` gives `cuda:0,cuda:1`; on the CPU, replicas share the one CPU device (`cpu,cpu`),
/// which exercises the data-parallel path without a second accelerator.
pub fn expand_device_count(count: usize, spec: &str) -> String {
    let kind = spec.split([':', ',']).next().unwrap_or("cpu");
    (0..count)
        .map(|i| match kind {
            "cpu" => "cpu".to_string(),
            kind => format!("{kind}:{i}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(feature = "wgpu")]
fn gpu_device(kind: &str, index: Option<usize>) -> Result<Device, ModelError> {
    use burn::tensor::DeviceKind;
    let device_kind = match index {
        Some(i) => DeviceKind::DiscreteGpu(i),
        None => DeviceKind::DefaultDevice,
    };
    Ok(match kind {
        "vulkan" => Device::vulkan(device_kind),
        _ => Device::wgpu(device_kind),
    })
}

#[cfg(not(feature = "wgpu"))]
fn gpu_device(kind: &str, _: Option<usize>) -> Result<Device, ModelError> {
    Err(ModelError::InvalidInput(format!(
        "device `{kind}` is not compiled into this build; rebuild with `--features wgpu`"
    )))
}

#[cfg(feature = "cuda-untuned")]
fn cuda_device(index: Option<usize>) -> Result<Device, ModelError> {
    #[cfg(feature = "cublas")]
    {
        static CUBLAS: std::sync::Once = std::sync::Once::new();
        CUBLAS.call_once(|| {
            if !crate::cublas::install() {
                eprintln!(
                    "warning: libcublasLt not found (searched the loader's path for \
                     libcublasLt.so); matrix products run on CubeCL's kernels"
                );
            }
            if !crate::sdpa::flash::install() {
                eprintln!(
                    "warning: libnvrtc not found; causal attention runs without flash kernels"
                );
            }
        });
    }
    Ok(Device::cuda(index.unwrap_or(0)))
}

#[cfg(not(feature = "cuda-untuned"))]
fn cuda_device(_: Option<usize>) -> Result<Device, ModelError> {
    Err(ModelError::InvalidInput(
        "device `cuda` is not compiled into this build; rebuild with `--features cuda` \
         (see docs/backends.md for the offline build)"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cuda_devices_replay_graphs() {
        assert!(replays_graphs("cuda") && replays_graphs("cuda:1"));
        assert!(!replays_graphs("cpu") && !replays_graphs("wgpu:0") && !replays_graphs("cudax"));
    }

    #[test]
    fn a_device_count_expands_to_indexed_devices_of_the_recipes_kind() {
        assert_eq!(expand_device_count(2, "cuda"), "cuda:0,cuda:1");
        assert_eq!(expand_device_count(3, "wgpu:1"), "wgpu:0,wgpu:1,wgpu:2");
        assert_eq!(expand_device_count(2, "cpu"), "cpu,cpu");
    }

    #[test]
    fn a_device_list_parses_into_one_replica_per_entry_and_refuses_mixed_or_repeated() {
        let set = parse_devices("cpu,cpu").unwrap();
        assert_eq!(set.devices.len(), 2);
        assert!(!set.collective, "the CPU has no collective backend");
        assert_eq!(parse_devices("cpu").unwrap().devices.len(), 1);
        let mixed = parse_devices("cpu,cuda:0").unwrap_err().to_string();
        assert!(mixed.contains("`cuda:0` is not a cpu device"), "{mixed}");
        let twice = parse_devices("wgpu:0,wgpu:0").unwrap_err().to_string();
        assert!(twice.contains("`wgpu:0` is listed twice"), "{twice}");
    }
}
