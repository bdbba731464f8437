//! The in-process CPU communicator: the ranks are threads of one process, a collective is an
//! exchange through shared memory guarded by one mutex.
//!
//! Each collective is one rendezvous: every rank deposits a copy of its buffer, waits until all
//! `world` deposits of that collective are in, takes every deposit, and computes its result
//! locally (a sum in rank order, a concatenation, the root's buffer). Successive collectives
//! alternate between two deposit sets: a rank at collective `k` has passed the rendezvous of
//! `k - 1`, which every rank entered only after taking its deposits of `k - 2`, so the set of
//! `k - 2` is free to reuse. One wait per collective, no second barrier.
//!
//! Invariants: the sum is taken in rank order on every rank, so every rank's result is
//! bit-identical (the residual streams of the ranks never drift apart); a wait ends at the
//! group's timeout or when any rank aborts, and from then on every collective fails at once.

use super::{check_gather, CommError, Communicator};
use crate::{DType, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

type Deposit = Arc<Vec<f32>>;

#[derive(Default)]
struct Round {
    /// The collective (per-rank sequence number) this set serves.
    seq: u64,
    deposits: Vec<Option<Deposit>>,
    arrived: usize,
}

struct State {
    rounds: [Round; 2],
    aborted: bool,
}

struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    changed: Condvar,
}

/// Makes the ranks of one CPU group.
pub struct CpuGroup;

impl CpuGroup {
    /// `world` connected ranks (index = rank); a collective waits at most `timeout` for the
    /// others.
    pub fn connect(world: usize, timeout: Duration) -> Vec<Arc<CpuComm>> {
        let round = || Round { seq: 0, deposits: vec![None; world], arrived: 0 };
        let shared = Arc::new(Shared {
            world,
            timeout,
            state: Mutex::new(State { rounds: [round(), round()], aborted: false }),
            changed: Condvar::new(),
        });
        (0..world).map(|rank| Arc::new(CpuComm { rank, shared: shared.clone(), seq: AtomicU64::new(0) })).collect()
    }
}

/// One rank of a [`CpuGroup`].
pub struct CpuComm {
    rank: usize,
    shared: Arc<Shared>,
    /// Collectives this rank has entered.
    seq: AtomicU64,
}

impl CpuComm {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deposit `mine` for this rank's next collective and return every rank's deposit, by rank.
    fn exchange(&self, op: &'static str, mine: Vec<f32>) -> Result<Vec<Deposit>, CommError> {
        let (world, rank) = (self.shared.world, self.rank);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let set = (seq % 2) as usize;
        let mut st = self.lock();
        if st.aborted {
            return Err(CommError::Aborted { rank, op });
        }
        let round = &mut st.rounds[set];
        if round.seq != seq || round.arrived == world {
            // First to arrive at `seq`: the set last served `seq - 2`, finished by every rank.
            *round = Round { seq, deposits: vec![None; world], arrived: 0 };
        }
        round.deposits[rank] = Some(Arc::new(mine));
        round.arrived += 1;
        self.shared.changed.notify_all();
        let deadline = Instant::now() + self.shared.timeout;
        loop {
            let round = &st.rounds[set];
            if round.seq == seq && round.arrived == world {
                return round
                    .deposits
                    .iter()
                    .map(|d| d.clone().ok_or(CommError::Aborted { rank, op }))
                    .collect::<Result<Vec<_>, _>>();
            }
            if st.aborted {
                return Err(CommError::Aborted { rank, op });
            }
            let now = Instant::now();
            if now >= deadline {
                st.aborted = true;
                self.shared.changed.notify_all();
                return Err(CommError::Timeout { rank, op, timeout: self.shared.timeout });
            }
            st = self.shared.changed.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn f32_rows(&self, op: &'static str, t: &Tensor) -> Result<Vec<f32>, CommError> {
        if t.dtype() != DType::F32 || !t.device().is_cpu() {
            return Err(CommError::Unsupported {
                rank: self.rank,
                op,
                msg: format!("the CPU group moves f32 CPU tensors, not {} on {}", t.dtype(), t.device().label()),
            });
        }
        Ok(t.with_host::<f32, _>(|v| (0..v.rows).flat_map(|r| v.row(r).to_vec()).collect())?)
    }

    /// Fail every rank's collective; called on error paths, so it cannot fail itself.
    fn mark_aborted(&self) {
        self.lock().aborted = true;
        self.shared.changed.notify_all();
    }
}

impl Communicator for CpuComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, t: &mut Tensor) -> Result<(), CommError> {
        let mine = self.f32_rows("all_reduce_sum", t)?;
        let all = self.exchange("all_reduce_sum", mine)?;
        let cols = t.cols();
        t.with_host_mut::<f32, _>(|mut v| {
            for r in 0..v.rows {
                let out = v.row_mut(r);
                out.copy_from_slice(&all[0][r * cols..(r + 1) * cols]);
                for d in &all[1..] {
                    out.iter_mut().zip(&d[r * cols..(r + 1) * cols]).for_each(|(o, x)| *o += x);
                }
            }
        })?;
        Ok(())
    }

    fn all_gather_rows(&self, send: &Tensor, recv: &mut Tensor) -> Result<(), CommError> {
        check_gather(self.rank, self.shared.world, send, recv)?;
        let mine = self.f32_rows("all_gather_rows", send)?;
        let all = self.exchange("all_gather_rows", mine)?;
        let (rows, cols) = (send.rows(), send.cols());
        recv.with_host_mut::<f32, _>(|mut v| {
            for (k, d) in all.iter().enumerate() {
                for r in 0..rows {
                    v.row_mut(k * rows + r).copy_from_slice(&d[r * cols..(r + 1) * cols]);
                }
            }
        })?;
        Ok(())
    }

    fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<(), CommError> {
        let (rank, world) = (self.rank, self.shared.world);
        if root >= world {
            return Err(CommError::Shape { rank, op: "broadcast", msg: format!("root {root} of {world} ranks") });
        }
        let mine = if rank == root { self.f32_rows("broadcast", t)? } else { Vec::new() };
        let all = self.exchange("broadcast", mine)?;
        if rank == root {
            return Ok(());
        }
        let (src, cols) = (&all[root], t.cols());
        if src.len() != t.rows() * cols {
            let msg = format!("{} values from the root into {}×{cols}", src.len(), t.rows());
            return Err(CommError::Shape { rank, op: "broadcast", msg });
        }
        t.with_host_mut::<f32, _>(|mut v| {
            for r in 0..v.rows {
                v.row_mut(r).copy_from_slice(&src[r * cols..(r + 1) * cols]);
            }
        })?;
        Ok(())
    }

    fn abort(&self) {
        self.mark_aborted();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    fn run<R: Send>(world: usize, timeout: Duration, f: impl Fn(&CpuComm) -> R + Sync) -> Vec<R> {
        let ranks = CpuGroup::connect(world, timeout);
        std::thread::scope(|s| {
            let handles: Vec<_> = ranks.iter().map(|c| s.spawn(|| f(c))).collect();
            handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
        })
    }

    fn tensor(rows: usize, cols: usize, f: impl Fn(usize) -> f32) -> Tensor {
        let data: Vec<f32> = (0..rows * cols).map(f).collect();
        Tensor::from_f32(&Device::Cpu, &data, rows, cols).unwrap()
    }

    #[test]
    fn all_reduce_sums_in_rank_order_and_every_rank_agrees_bitwise() {
        let value = |rank: usize, i: usize| (i as f32 + 0.1) * (rank as f32 + 1.0).powi(7) * 1e-3;
        for world in 1..=4 {
            let out = run(world, DEFAULT, |c| {
                let mut t = tensor(3, 5, |i| value(c.rank(), i));
                c.all_reduce_sum(&mut t).unwrap();
                let once = t.to_host_f32().unwrap();
                // More rounds: the two deposit sets alternate and are reused.
                for _ in 0..20 {
                    c.all_reduce_sum(&mut t).unwrap();
                }
                (once, t.to_host_f32().unwrap())
            });
            let want: Vec<f32> = (0..15).map(|i| (0..world).fold(0f32, |a, r| a + value(r, i))).collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for (once, many) in &out {
                assert_eq!(bits(once), bits(&want), "{world} ranks: the sum in rank order");
                assert_eq!(bits(many), bits(&out[0].1), "{world} ranks agree after many rounds");
            }
        }
    }

    #[test]
    fn all_gather_and_broadcast_move_whole_rows_of_views() {
        let out = run(3, DEFAULT, |c| {
            let r = c.rank() as f32;
            // A column view: strided rows.
            let wide = tensor(2, 6, |i| r * 100.0 + i as f32);
            let send = wide.view_cols(1, 3).unwrap();
            let mut recv = Tensor::zeros(&Device::Cpu, DType::F32, 6, 3).unwrap();
            c.all_gather_rows(&send, &mut recv).unwrap();
            let mut b = tensor(2, 2, |i| r * 10.0 + i as f32);
            c.broadcast(&mut b, 2).unwrap();
            (recv.to_host_f32().unwrap(), b.to_host_f32().unwrap())
        });
        for (gathered, b) in &out {
            assert_eq!(&gathered[..6], &[1.0, 2.0, 3.0, 7.0, 8.0, 9.0]);
            assert_eq!(&gathered[12..15], &[201.0, 202.0, 203.0]);
            assert_eq!(b, &vec![20.0, 21.0, 22.0, 23.0]);
        }
    }

    #[test]
    fn a_rank_that_never_comes_times_out_and_an_abort_ends_every_wait() {
        let out = run(3, Duration::from_millis(200), |c| {
            let mut t = tensor(1, 4, |i| i as f32);
            if c.rank() == 2 {
                return None; // never joins
            }
            let start = Instant::now();
            let e = c.all_reduce_sum(&mut t).unwrap_err();
            Some((e.to_string(), start.elapsed()))
        });
        for (msg, took) in out.into_iter().flatten() {
            assert!(msg.contains("did not reach") || msg.contains("aborted"), "{msg}");
            assert!(took < Duration::from_secs(5), "{took:?}");
        }
        let out = run(2, Duration::from_secs(60), |c| {
            let mut t = tensor(1, 4, |i| i as f32);
            if c.rank() == 1 {
                std::thread::sleep(Duration::from_millis(50));
                c.abort();
                return String::new();
            }
            c.all_reduce_sum(&mut t).unwrap_err().to_string()
        });
        assert!(out[0].contains("aborted"), "{}", out[0]);
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let out = run(2, DEFAULT, |c| {
            let send = tensor(2, 3, |i| i as f32);
            let mut recv = Tensor::zeros(&Device::Cpu, DType::F32, 3, 3).unwrap();
            c.all_gather_rows(&send, &mut recv).unwrap_err().to_string()
        });
        assert!(out[0].contains("from each of 2 ranks"), "{}", out[0]);
    }

    const DEFAULT: Duration = Duration::from_secs(30);
}
