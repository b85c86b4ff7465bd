//! Locks that outlive a panicking holder. A panic in one connection's thread must not take the
//! whole server down through poisoned locks: every structure behind these locks is updated so
//! that it stays consistent at each step (a half-done update is never left for a panic to
//! expose), so the next holder takes the lock as it is.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `lock`, `read`, `write`, `wait` and `into_inner` that take a poisoned lock as it is.
pub trait Unpoisoned {
    type Inner;
    fn lock_unpoisoned(&self) -> MutexGuard<'_, Self::Inner>;
    fn into_inner_unpoisoned(self) -> Self::Inner;
}

impl<T> Unpoisoned for Mutex<T> {
    type Inner = T;

    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn into_inner_unpoisoned(self) -> T {
        self.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Read and write guards of an [`RwLock`], poisoned or not.
pub trait RwUnpoisoned<T> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T>;
    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> RwUnpoisoned<T> for RwLock<T> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`Condvar::wait`], taking the guard back even if another holder panicked.
pub fn wait_unpoisoned<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar.wait(guard).unwrap_or_else(PoisonError::into_inner)
}
