//! Row gathers: embedding lookup (`table[ids]`) and picking the rows that need logits.

use crate::device::tensor_io::{copy_device, gather_bytes, scatter_bytes};
use crate::{Device, Tensor, TensorError};

/// `out[i] = table[ids[i]]`: a new contiguous `[ids.len(), table.cols()]` tensor on the
/// table's device.
pub fn gather_rows(table: &Tensor, ids: &[u32]) -> Result<Tensor, TensorError> {
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= table.rows()) {
        return Err(TensorError::Shape(format!("gather_rows: row {bad} of a {}-row table", table.rows())));
    }
    let mut out = Tensor::uninit(table.device(), table.dtype(), ids.len(), table.cols())?;
    match table.device() {
        Device::Cpu => {
            let mut bytes = Vec::with_capacity(ids.len() * table.cols() * table.dtype().size_bytes());
            for &i in ids {
                bytes.extend_from_slice(&gather_bytes(&table.view_rows(i as usize, 1)?)?);
            }
            scatter_bytes(&mut out, &bytes)?;
        }
        Device::Cuda(_) => {
            // One 2-D copy per row; a gather kernel replaces this with the CUDA backend work.
            for (r, &i) in ids.iter().enumerate() {
                copy_device(&table.view_rows(i as usize, 1)?, &mut out.view_rows(r, 1)?)?;
            }
        }
    }
    Ok(out)
}
