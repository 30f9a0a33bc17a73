//! The inventory's in-process locks by product.

use uuid::Uuid;

/// In-process locks by product: handlers in one process that touch the same product take
/// turns instead of racing to a version conflict. Across processes the expected versions
/// still decide; the locks only spare wasted work.
#[derive(Debug)]
pub(super) struct ProductStripes {
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl ProductStripes {
    const STRIPES: usize = 64;

    /// Unlocked stripes.
    pub(super) fn new() -> Self {
        ProductStripes {
            locks: (0..Self::STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// Locks the stripes of `products`, always in the same order, so two handlers never
    /// wait on each other in a circle.
    pub(super) async fn lock(&self, products: &[Uuid]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = products
            .iter()
            .map(|id| (id.as_u128() % Self::STRIPES as u128) as usize)
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            guards.push(self.locks[stripe].lock().await);
        }
        guards
    }
}
