//! The timed loop: warm-up (which calibrates the batch size), a start shared by every
//! thread or process, then batches of operations until the time is up.

use std::sync::{Arc, Barrier};
use std::time::Instant;

/// One operation of a workload. Returns the bytes moved, or 0 when exhausted.
pub(super) trait Op: Send {
    fn op(&mut self) -> anyhow::Result<u64>;
    /// Clean-up after the timed part.
    fn finish(&mut self) {}
}

/// Runs the ops, one per thread; returns (timed ops, warm-up ops, seconds).
pub(super) fn drive_all(
    mut ops: Vec<Box<dyn Op>>,
    warm: f64,
    secs: f64,
) -> anyhow::Result<(u64, u64, f64)> {
    if ops.len() == 1 {
        let r = drive(ops[0].as_mut(), warm, secs, &|| Ok(()))?;
        ops.pop().unwrap().finish();
        return Ok(r);
    }
    let barrier = Arc::new(Barrier::new(ops.len()));
    let handles: Vec<_> = ops
        .into_iter()
        .map(|mut op| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                let r = drive(op.as_mut(), warm, secs, &|| {
                    b.wait();
                    Ok(())
                });
                op.finish();
                r
            })
        })
        .collect();
    let (mut ops_sum, mut warm_sum, mut secs_max) = (0, 0, 0f64);
    for h in handles {
        let (o, w, s) = h
            .join()
            .map_err(|_| anyhow::anyhow!("worker thread panicked"))??;
        ops_sum += o;
        warm_sum += w;
        secs_max = secs_max.max(s);
    }
    Ok((ops_sum, warm_sum, secs_max))
}

/// Warm up for `warm` seconds, wait for the other threads or processes (`sync`), then run
/// batches of about a millisecond each until `secs` have passed (or the op says it is
/// exhausted).
pub(super) fn drive(
    op: &mut dyn Op,
    warm: f64,
    secs: f64,
    sync: &dyn Fn() -> anyhow::Result<()>,
) -> anyhow::Result<(u64, u64, f64)> {
    let t0 = Instant::now();
    let mut warm_ops = 0u64;
    let mut exhausted = false;
    'warm: loop {
        for _ in 0..16 {
            if op.op()? == 0 {
                exhausted = true;
                break 'warm;
            }
            warm_ops += 1;
        }
        if t0.elapsed().as_secs_f64() >= warm {
            break;
        }
    }
    let rate = warm_ops as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    let batch = ((rate / 1000.0) as u64).clamp(1, 1 << 20);
    sync()?;
    let start = Instant::now();
    let mut n = 0u64;
    if !exhausted {
        'run: loop {
            for _ in 0..batch {
                if op.op()? == 0 {
                    break 'run;
                }
                n += 1;
            }
            if start.elapsed().as_secs_f64() >= secs {
                break;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok((n, warm_ops, elapsed))
}
