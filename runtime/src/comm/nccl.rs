//! The NCCL communicator: one rank per CUDA device, its collectives enqueued on the rank's
//! [`CudaBackend::stream`].
//!
//! Ordering: a collective goes on the one stream that all of the rank's kernels use, so it runs
//! after the kernels that wrote its input and before those that read its output, and no call
//! here waits on the GPU; the calls can therefore be captured into a CUDA graph (NCCL supports
//! stream capture). Run one step eagerly before capturing: NCCL connects the ranks lazily, in
//! the first collectives. Like a kernel's, a collective's buffers must outlive its run on the
//! stream; kiln frees device memory in stream order, so dropping a tensor after the call is safe.
//!
//! The library: `libnccl.so.2` is opened at run time, not linked, so kiln builds and runs where
//! NCCL is absent, and a missing library is a [`CommError::Nccl`] that names it. cudarc's own
//! loader (`cudarc::nccl::sys`) looks for `libnccl.so`, `libnccl.so.13`, … but not the soname
//! `libnccl.so.2` that the NCCL packages and the `nvidia-nccl-cu13` wheel ship, and it panics
//! when it finds nothing; so this module resolves the few functions it calls itself, with
//! cudarc's `nccl::sys` types for their arguments. It looks on the loader's path, then in the
//! folders of `$KILN_CUDA_LIB_DIRS` (where the wheel's `nvidia/nccl/lib` can be named).
//!
//! Timeouts: NCCL collectives are asynchronous. A rank that died or hangs leaves the other
//! ranks' NCCL kernels spinning on their GPUs, and a host wait on their streams (reading the
//! logits back) never returns; nothing in this module can see that. The owner bounds it: the
//! tensor-parallel driver (`models/src/tp.rs`) waits for each rank's step with a timeout, and
//! when a rank fails or the timeout passes it calls [`Communicator::abort`] on **every** rank's
//! communicator. `abort` is `ncclCommAbort`: NCCL's kernels poll the abort flag it raises and
//! exit, so the stuck streams drain (the collectives' outputs are garbage) and the host waits
//! return. An abort reaches only its own communicator, hence every rank; on other hosts, each
//! host's driver times out and aborts its own. After an abort every call fails with
//! [`CommError::Aborted`]; CUDA graphs that captured the collectives must not be replayed (they
//! name the freed communicator), and NCCL work queued behind the stuck collective may fail on
//! the stream: the owner refuses further steps and treats the ranks' GPU state as lost.
//!
//! Invariants:
//! - one NCCL call at a time on a communicator (NCCL forbids concurrent calls on one): a mutex
//!   holds the handle, and a call holds it only while it enqueues — never while the GPU works —
//!   so the driver's `abort` is not held up by a stuck rank;
//! - the handle is released exactly once, by `abort` or else on drop, and always with
//!   `ncclCommAbort`: `ncclCommDestroy` waits for queued work, which hangs when a peer is gone.
//!   Drop a group only when no collective is in flight (after every rank read its last step);
//! - every tensor is checked (device, contiguity, shapes, overlap) before NCCL gets its address;
//!   what NCCL cannot check — every rank calls the same collectives with the same shapes — is
//!   the caller's invariant (see the parent module).

use super::{check_gather, CommError, Communicator};
use crate::device::cuda_backend::CudaBackend;
use crate::device::cuda_error::drv;
use crate::{DType, Device, Tensor, TensorError};
use cudarc::driver::sys::CUstream;
use cudarc::nccl::sys::{ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};
use libloading::Library;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// The names the library is opened by, the soname first.
const SONAMES: &[&str] = &["libnccl.so.2", "libnccl.so"];

/// `ncclSuccess` and `ncclInProgress` (an asynchronous error state that is no error).
const NCCL_SUCCESS: c_int = 0;
const NCCL_IN_PROGRESS: c_int = 7;

/// The oldest NCCL with everything used here (bf16 came in 2.10); codes are `major*10000 +
/// minor*100 + patch` since 2.9.
const MIN_VERSION: c_int = 21000;

/// The NCCL functions this module calls, resolved once from the loaded library. Each field's
/// type is the function's C signature in `nccl.h`; results are read as `c_int` rather than
/// cudarc's `ncclResult_t` enum, so a code newer than the bindings is still a valid value.
struct Api {
    get_version: unsafe extern "C" fn(*mut c_int) -> c_int,
    get_unique_id: unsafe extern "C" fn(*mut ncclUniqueId) -> c_int,
    comm_init_rank: unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> c_int,
    comm_init_all: unsafe extern "C" fn(*mut ncclComm_t, c_int, *const c_int) -> c_int,
    comm_abort: unsafe extern "C" fn(ncclComm_t) -> c_int,
    comm_get_async_error: unsafe extern "C" fn(ncclComm_t, *mut c_int) -> c_int,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        ncclDataType_t,
        ncclRedOp_t,
        ncclComm_t,
        CUstream,
    ) -> c_int,
    all_gather: unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, ncclComm_t, CUstream) -> c_int,
    broadcast:
        unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, c_int, ncclComm_t, CUstream) -> c_int,
    get_error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    get_last_error: unsafe extern "C" fn(ncclComm_t) -> *const c_char,
    /// Keeps the functions above valid: the `Api` lives in a static, so the library is never
    /// unloaded.
    _lib: Library,
}

/// The process's NCCL, loaded on first use; the error (library or symbol missing, too old) is
/// kept too, so every later call fails the same way without searching again.
fn api() -> Result<&'static Api, CommError> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| load(SONAMES, &lib_dirs())).as_ref().map_err(|e| CommError::Nccl(e.clone()))
}

/// `$KILN_CUDA_LIB_DIRS`, `:`-separated, as for the other CUDA libraries (`device::cuda_libs`).
fn lib_dirs() -> Vec<PathBuf> {
    std::env::var("KILN_CUDA_LIB_DIRS")
        .map(|v| v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect())
        .unwrap_or_default()
}

/// Open the first of `names` found on the loader's path, else in `dirs`, and resolve the API.
fn load(names: &[&str], dirs: &[PathBuf]) -> Result<Api, String> {
    let by_name = names.iter().map(PathBuf::from);
    let by_path = dirs.iter().flat_map(|d| names.iter().map(move |n| d.join(n)));
    for candidate in by_name.chain(by_path) {
        // SAFETY: opening the library runs its initialisers, trusted vendor code (as for every
        // CUDA library cudarc opens).
        if let Ok(lib) = unsafe { Library::new(&candidate) } {
            return Api::resolve(lib, &candidate.display().to_string());
        }
    }
    let looked = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>();
    Err(format!(
        "{} not found on the loader path{}; install NCCL (the libnccl2 package or the nvidia-nccl-cu13 \
         wheel) and name its folder in KILN_CUDA_LIB_DIRS",
        names.first().copied().unwrap_or("libnccl"),
        if looked.is_empty() { String::new() } else { format!(" or in {}", looked.join(", ")) }
    ))
}

/// Symbol `name` of `lib` as a function of type `F`.
///
/// Only called with the `Api` field types, which are the C signatures of the same names.
fn sym<F: Copy>(lib: &Library, path: &str, name: &str) -> Result<F, String> {
    // SAFETY: `F` is `name`'s C signature (see above), and the library outlives the copy: both
    // end up in the same `Api`, which is never dropped.
    unsafe { lib.get::<F>(name) }.map(|s| *s).map_err(|e| format!("{path} has no {name} (not NCCL 2?): {e}"))
}

impl Api {
    fn resolve(lib: Library, path: &str) -> Result<Api, String> {
        let api = Api {
            get_version: sym(&lib, path, "ncclGetVersion")?,
            get_unique_id: sym(&lib, path, "ncclGetUniqueId")?,
            comm_init_rank: sym(&lib, path, "ncclCommInitRank")?,
            comm_init_all: sym(&lib, path, "ncclCommInitAll")?,
            comm_abort: sym(&lib, path, "ncclCommAbort")?,
            comm_get_async_error: sym(&lib, path, "ncclCommGetAsyncError")?,
            all_reduce: sym(&lib, path, "ncclAllReduce")?,
            all_gather: sym(&lib, path, "ncclAllGather")?,
            broadcast: sym(&lib, path, "ncclBroadcast")?,
            get_error_string: sym(&lib, path, "ncclGetErrorString")?,
            get_last_error: sym(&lib, path, "ncclGetLastError")?,
            _lib: lib,
        };
        let mut version: c_int = 0;
        // SAFETY: a valid out-pointer; the call only writes it.
        let r = unsafe { (api.get_version)(&mut version) };
        if r != NCCL_SUCCESS || version < MIN_VERSION {
            return Err(format!("{path} is NCCL version code {version}; kiln needs 2.10 or newer"));
        }
        Ok(api)
    }

    /// `Ok` for success, else an error naming the call, NCCL's name for the code and NCCL's last
    /// message (`comm` may be null: the process's last error).
    fn check(&self, who: &str, r: c_int, comm: ncclComm_t) -> Result<(), CommError> {
        if r == NCCL_SUCCESS {
            return Ok(());
        }
        // SAFETY: NCCL returns a static string for any code.
        let name = text(unsafe { (self.get_error_string)(r) });
        // SAFETY: `comm` is a live communicator or null, both accepted; the string is copied at
        // once.
        let last = text(unsafe { (self.get_last_error)(comm) });
        let last = if last.is_empty() { String::new() } else { format!(": {last}") };
        Err(CommError::Nccl(format!("{who} failed: {name} (code {r}){last}")))
    }
}

/// An owned copy of a C string NCCL returned; empty for null.
fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null strings from NCCL are NUL-terminated and live at least until the next NCCL
    // call on this thread; copied before any.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn nccl_dtype(d: DType) -> ncclDataType_t {
    match d {
        DType::F32 => ncclDataType_t::ncclFloat32,
        DType::F16 => ncclDataType_t::ncclFloat16,
        DType::BF16 => ncclDataType_t::ncclBfloat16,
        DType::I32 => ncclDataType_t::ncclInt32,
        // Moved as bytes (no collective sums e4m3 values: activations are quantized per rank).
        DType::F8E4M3 => ncclDataType_t::ncclUint8,
        DType::I8 => ncclDataType_t::ncclInt8,
    }
}

/// A unique id as the hex string a launcher passes to every host.
fn id_to_hex(id: &ncclUniqueId) -> String {
    id.internal.iter().map(|&b| format!("{:02x}", b as u8)).collect()
}

/// The id [`id_to_hex`] wrote.
fn id_from_hex(hex: &str) -> Result<ncclUniqueId, CommError> {
    let bad = || {
        let shown: String = hex.chars().take(16).collect();
        CommError::Nccl(format!(
            "a unique id is 256 hex digits (from NcclGroup::new_unique_id), not {shown:?}{} ({} chars)",
            if hex.chars().count() > 16 { "…" } else { "" },
            hex.len()
        ))
    };
    let mut id = ncclUniqueId { internal: [0; 128] };
    if hex.len() != 2 * id.internal.len() || !hex.is_ascii() {
        return Err(bad());
    }
    for (out, pair) in id.internal.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
        *out = u8::from_str_radix(pair, 16).map_err(|_| bad())? as c_char;
    }
    Ok(id)
}

/// The backend of a rank's device; NCCL only moves CUDA memory.
fn cuda_backend(rank: usize, device: &Device) -> Result<Arc<CudaBackend>, CommError> {
    device.cuda_backend().cloned().ok_or_else(|| CommError::Unsupported {
        rank,
        op: "init",
        msg: format!("NCCL needs a CUDA device, rank {rank} is on {}", device.label()),
    })
}

fn c_count(rank: usize, what: &str, n: usize) -> Result<c_int, CommError> {
    c_int::try_from(n).map_err(|_| CommError::Shape { rank, op: "init", msg: format!("{what} {n} is out of range") })
}

/// Makes NCCL groups and the ids that join ranks across hosts.
pub struct NcclGroup;

impl NcclGroup {
    /// One communicator per device of this process (`ncclCommInitAll`): rank `i` on
    /// `devices[i]`, each a different CUDA device.
    pub fn one_host(devices: &[Device]) -> Result<Vec<Arc<NcclComm>>, CommError> {
        if devices.is_empty() {
            return Err(CommError::Shape { rank: 0, op: "init", msg: "a group needs at least one device".into() });
        }
        let backends = devices.iter().enumerate().map(|(r, d)| cuda_backend(r, d)).collect::<Result<Vec<_>, _>>()?;
        for (rank, b) in backends.iter().enumerate() {
            // NCCL does not support two ranks of one communicator on one device (it may hang).
            if let Some(first) = backends[..rank].iter().position(|o| o.ordinal() == b.ordinal()) {
                let msg = format!("cuda:{} is rank {first}'s device too; NCCL needs one device per rank", b.ordinal());
                return Err(CommError::Unsupported { rank, op: "init", msg });
            }
        }
        let api = api()?;
        let world = c_count(0, "a world of", devices.len())?;
        let ordinals = backends.iter().map(|b| c_count(0, "device", b.ordinal())).collect::<Result<Vec<_>, _>>()?;
        let mut handles: Vec<ncclComm_t> = vec![std::ptr::null_mut(); devices.len()];
        // SAFETY: `handles` has room for `world` handles and `ordinals` holds `world` ordinals;
        // NCCL writes the one and reads the other during the call only.
        let r = unsafe { (api.comm_init_all)(handles.as_mut_ptr(), world, ordinals.as_ptr()) };
        api.check(&format!("ncclCommInitAll over {} devices", devices.len()), r, std::ptr::null_mut())?;
        Ok(handles
            .into_iter()
            .zip(devices.iter().zip(backends))
            .enumerate()
            .map(|(rank, (h, (d, b)))| Arc::new(NcclComm::new(api, h, rank, devices.len(), d.clone(), b)))
            .collect())
    }

    /// A new NCCL unique id, hex-encoded, for [`NcclComm::from_unique_id`]: made once (by the
    /// launcher or rank 0) and handed to every rank, e.g. on each host's command line.
    pub fn new_unique_id() -> Result<String, CommError> {
        let api = api()?;
        let mut id = ncclUniqueId { internal: [0; 128] };
        // SAFETY: a valid out-pointer; the call only writes it.
        let r = unsafe { (api.get_unique_id)(&mut id) };
        api.check("ncclGetUniqueId", r, std::ptr::null_mut())?;
        Ok(id_to_hex(&id))
    }
}

/// The NCCL handle.
struct RawComm(ncclComm_t);

// SAFETY: an `ncclComm_t` points to NCCL's heap state, usable from any host thread; NCCL forbids
// only concurrent calls on one communicator, and every call goes through the `Mutex` that owns
// the `RawComm`.
unsafe impl Send for RawComm {}

/// One rank of an NCCL group, on one CUDA device.
pub struct NcclComm {
    api: &'static Api,
    rank: usize,
    world: usize,
    device: Device,
    backend: Arc<CudaBackend>,
    /// `None` once aborted.
    handle: Mutex<Option<RawComm>>,
}

impl NcclComm {
    fn new(
        api: &'static Api,
        handle: ncclComm_t,
        rank: usize,
        world: usize,
        device: Device,
        backend: Arc<CudaBackend>,
    ) -> NcclComm {
        NcclComm { api, rank, world, device, backend, handle: Mutex::new(Some(RawComm(handle))) }
    }

    /// Rank `rank` of `world` on `device`, joined through `id_hex` (from
    /// [`NcclGroup::new_unique_id`]), one call per rank, each on its own thread or process
    /// (`ncclCommInitRank`). Returns once all `world` ranks have called it; a rank that never
    /// calls leaves the others waiting (there is no communicator to abort yet), so the launcher
    /// bounds start-up itself.
    pub fn from_unique_id(
        id_hex: &str,
        rank: usize,
        world: usize,
        device: &Device,
    ) -> Result<Arc<NcclComm>, CommError> {
        if rank >= world {
            return Err(CommError::Shape { rank, op: "init", msg: format!("rank {rank} of a world of {world}") });
        }
        let id = id_from_hex(id_hex)?;
        let backend = cuda_backend(rank, device)?;
        let api = api()?;
        let (nranks, me) = (c_count(rank, "a world of", world)?, c_count(rank, "rank", rank)?);
        // ncclCommInitRank builds the communicator on the thread's current device.
        drv("binding the CUDA context", backend.context().bind_to_thread()).map_err(TensorError::from)?;
        let mut handle: ncclComm_t = std::ptr::null_mut();
        // SAFETY: a valid out-pointer; the id is passed by value.
        let r = unsafe { (api.comm_init_rank)(&mut handle, nranks, id, me) };
        api.check(&format!("rank {rank}: ncclCommInitRank (world {world})"), r, std::ptr::null_mut())?;
        Ok(Arc::new(NcclComm::new(api, handle, rank, world, device.clone(), backend)))
    }

    fn lock(&self) -> MutexGuard<'_, Option<RawComm>> {
        self.handle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device address and NCCL type of a tensor this rank may hand to NCCL.
    fn buffer(&self, op: &'static str, what: &str, t: &Tensor) -> Result<(u64, ncclDataType_t), CommError> {
        let rank = self.rank;
        let wrong_device = || CommError::Unsupported {
            rank,
            op,
            msg: format!(
                "{what} is on {}, this rank's NCCL communicator on {}",
                t.device().label(),
                self.device.label()
            ),
        };
        if t.device() != &self.device {
            return Err(wrong_device());
        }
        if !t.is_contiguous() {
            let msg = format!(
                "{what} is a strided view ({}×{}, row stride {}); NCCL moves contiguous buffers",
                t.rows(),
                t.cols(),
                t.row_stride()
            );
            return Err(CommError::Shape { rank, op, msg });
        }
        let ptr = t.cuda_ptr().ok_or_else(wrong_device)?;
        Ok((ptr, nccl_dtype(t.dtype())))
    }

    /// Enqueue one collective of `count` elements on this rank's stream: `call` gets the
    /// communicator and the stream and returns NCCL's result. Fails without calling when the
    /// communicator was aborted or NCCL reported an asynchronous error (a peer's network
    /// failure): the owner then aborts the group.
    fn enqueue(
        &self,
        op: &'static str,
        nccl_fn: &str,
        count: usize,
        call: impl FnOnce(&Api, ncclComm_t, CUstream) -> c_int,
    ) -> Result<(), CommError> {
        let rank = self.rank;
        let guard = self.lock();
        let comm = guard.as_ref().ok_or(CommError::Aborted { rank, op })?.0;
        let mut state = NCCL_SUCCESS;
        // SAFETY: `comm` is live (present under the lock; only an abort, under the same lock,
        // releases it); a valid out-pointer.
        let r = unsafe { (self.api.comm_get_async_error)(comm, &mut state) };
        self.api.check(&format!("rank {rank}: ncclCommGetAsyncError"), r, comm)?;
        if state != NCCL_SUCCESS && state != NCCL_IN_PROGRESS {
            self.api.check(&format!("rank {rank}: {op}: an earlier collective (asynchronous error)"), state, comm)?;
        }
        if count == 0 {
            // Nothing to move; every rank has the same shapes, so every rank skips it.
            return Ok(());
        }
        // NCCL switches to the communicator's device itself; binding keeps the thread's current
        // context what kiln's other CUDA calls expect.
        drv("binding the CUDA context", self.backend.context().bind_to_thread()).map_err(TensorError::from)?;
        let r = call(self.api, comm, self.backend.stream().cu_stream());
        self.api.check(&format!("rank {rank}: {nccl_fn} of {count} elements"), r, comm)
    }

    /// Release the handle; its result is not acted on: the handle is gone either way.
    fn release(&self, h: RawComm) {
        // SAFETY: `h` was taken out of `handle`, so it is live and this is its only release; the
        // caller holds the lock (or `&mut self`), so no other NCCL call on it is running.
        let _ = unsafe { (self.api.comm_abort)(h.0) };
    }
}

/// Element addresses as the `void *` NCCL takes.
fn dev_ptr(p: u64) -> *mut c_void {
    p as usize as *mut c_void
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, t: &mut Tensor) -> Result<(), CommError> {
        const OP: &str = "all_reduce_sum";
        let (p, dtype) = self.buffer(OP, "the tensor", t)?;
        let count = t.len();
        self.enqueue(OP, "ncclAllReduce", count, |api, comm, stream| {
            // SAFETY: `p` addresses `count` contiguous elements of `dtype` in a live allocation on
            // the communicator's device (checked by `buffer`), in place; `comm` is live and
            // `stream` is the rank's stream, in that device's context.
            unsafe { (api.all_reduce)(dev_ptr(p), dev_ptr(p), count, dtype, ncclRedOp_t::ncclSum, comm, stream) }
        })
    }

    fn all_gather_rows(&self, send: &Tensor, recv: &mut Tensor) -> Result<(), CommError> {
        const OP: &str = "all_gather_rows";
        check_gather(self.rank, self.world, send, recv)?;
        let (sp, dtype) = self.buffer(OP, "send", send)?;
        let (rp, _) = self.buffer(OP, "recv", recv)?;
        let count = send.len();
        // Overlap is allowed only as NCCL's in-place form: `send` is this rank's rows of `recv`.
        let bytes = (count * send.dtype().size_bytes()) as u64;
        let overlaps = sp < rp + bytes * self.world as u64 && rp < sp + bytes;
        if bytes > 0 && overlaps && sp != rp + bytes * self.rank as u64 {
            let msg = "send overlaps recv other than as this rank's rows of it".to_string();
            return Err(CommError::Shape { rank: self.rank, op: OP, msg });
        }
        self.enqueue(OP, "ncclAllGather", count, |api, comm, stream| {
            // SAFETY: `sp` addresses `count` and `rp` `world * count` contiguous elements of
            // `dtype` in live allocations on the communicator's device (checked by `buffer` and
            // `check_gather`), overlapping at most in the in-place form; `comm` is live and
            // `stream` is the rank's stream.
            unsafe { (api.all_gather)(dev_ptr(sp), dev_ptr(rp), count, dtype, comm, stream) }
        })
    }

    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), CommError> {
        const OP: &str = "broadcast";
        let (rank, world) = (self.rank, self.world);
        if root >= world {
            return Err(CommError::Shape { rank, op: OP, msg: format!("root {root} of {world} ranks") });
        }
        let (p, dtype) = self.buffer(OP, "the tensor", t)?;
        let count = t.len();
        let root = c_count(rank, "root", root)?;
        self.enqueue(OP, "ncclBroadcast", count, |api, comm, stream| {
            // SAFETY: `p` addresses `count` contiguous elements of `dtype` in a live allocation
            // on the communicator's device (checked by `buffer`), in place; `comm` is live and
            // `stream` is the rank's stream.
            unsafe { (api.broadcast)(dev_ptr(p), dev_ptr(p), count, dtype, root, comm, stream) }
        })
    }

    fn abort(&self) {
        let mut guard = self.lock();
        if let Some(h) = guard.take() {
            self.release(h);
        }
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        let taken = self.handle.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = taken {
            self.release(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_hex(seed: u8) -> String {
        let mut id = ncclUniqueId { internal: [0; 128] };
        for (i, b) in id.internal.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(seed) as c_char;
        }
        id_to_hex(&id)
    }

    #[test]
    fn a_cpu_device_is_unsupported_not_a_panic() {
        let e = NcclGroup::one_host(&[Device::Cpu]).err().expect("a CPU device must be refused");
        assert!(matches!(e, CommError::Unsupported { rank: 0, op: "init", .. }), "{e}");
        assert!(e.to_string().contains("NCCL needs a CUDA device, rank 0 is on cpu"), "{e}");
        let e = NcclComm::from_unique_id(&id_hex(1), 1, 2, &Device::Cpu).err().expect("refused");
        assert!(matches!(e, CommError::Unsupported { rank: 1, op: "init", .. }), "{e}");
    }

    #[test]
    fn bad_groups_and_ids_are_refused_before_nccl_is_touched() {
        let e = NcclGroup::one_host(&[]).err().expect("no devices");
        assert!(matches!(e, CommError::Shape { .. }), "{e}");
        let e = NcclComm::from_unique_id(&id_hex(0), 2, 2, &Device::Cpu).err().expect("rank 2 of 2");
        assert!(e.to_string().contains("rank 2 of a world of 2"), "{e}");
        for bad in ["", "00", &id_hex(0)[1..], &format!("{}zz", &id_hex(0)[2..]), &"é".repeat(128)] {
            let e = NcclComm::from_unique_id(bad, 0, 1, &Device::Cpu).err().expect("a bad id");
            assert!(e.to_string().contains("256 hex digits"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn unique_ids_round_trip_through_hex() {
        for seed in [0u8, 1, 200] {
            let hex = id_hex(seed);
            assert_eq!(hex.len(), 256);
            let back = id_from_hex(&hex).unwrap();
            assert_eq!(id_to_hex(&back), hex);
            assert_eq!(id_from_hex(&hex.to_uppercase()).unwrap().internal, back.internal);
        }
    }

    #[test]
    fn a_missing_library_is_an_error_that_names_it() {
        let dirs = [PathBuf::from("/nonexistent/kiln-nccl-test")];
        let e = load(&["libnccl-kiln-test-absent.so.2"], &dirs).err().expect("no such library");
        assert!(e.contains("libnccl-kiln-test-absent.so.2 not found"), "{e}");
        assert!(e.contains("/nonexistent/kiln-nccl-test") && e.contains("KILN_CUDA_LIB_DIRS"), "{e}");
        // The real library: absent (as on CI), every entry point is the same clear error; present,
        // an id can be made without a GPU. Either way, no panic.
        match api() {
            Err(e) => {
                assert!(e.to_string().contains("libnccl.so.2 not found"), "{e}");
                let again = NcclGroup::new_unique_id().expect_err("no library, no id");
                assert_eq!(again.to_string(), e.to_string());
            }
            Ok(_) => match NcclGroup::new_unique_id() {
                Ok(hex) => assert_eq!(id_to_hex(&id_from_hex(&hex).unwrap()), hex),
                Err(e) => assert!(matches!(e, CommError::Nccl(_)), "{e}"),
            },
        }
    }
}
