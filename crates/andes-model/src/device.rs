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

#[cfg(feature = "cuda")]
fn cuda_device(index: Option<usize>) -> Result<Device, ModelError> {
    Ok(Device::cuda(index.unwrap_or(0)))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_: Option<usize>) -> Result<Device, ModelError> {
    Err(ModelError::InvalidInput(
        "device `cuda` is not compiled into this build; rebuild with `--features cuda` \
         (see docs/backends.md for the offline build)"
            .into(),
    ))
}
