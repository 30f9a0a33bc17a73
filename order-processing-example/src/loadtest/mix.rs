//! Which products an order of the load test buys.
//!
//! A shop's sales are skewed: a few products sell most. The default mix spreads orders over
//! K products of the load test's own, picked with a Zipf-like weight (product `r` of rank 1…K
//! weighs `1/r`), one to three lines an order. `--hot` sends every order to one product, the
//! worst case for contention on its stream.

use serde::Serialize;
use uuid::Uuid;

/// How many products the default mix spreads orders over.
pub const DEFAULT_PRODUCTS: usize = 50;

/// The most lines one order of the mix has.
const MAX_LINES: usize = 3;

/// How the load test's orders pick their products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ProductMix {
    /// Every order buys one unit of the same product.
    Hot,
    /// One to three distinct products an order, out of `products`, skewed towards the first.
    Spread {
        /// How many products.
        products: usize,
    },
}

impl ProductMix {
    /// How many products the load test stocks.
    pub fn products(&self) -> usize {
        match self {
            ProductMix::Hot => 1,
            ProductMix::Spread { products } => (*products).max(1),
        }
    }

    /// Describes the mix for the report.
    pub fn describe(&self) -> String {
        match self {
            ProductMix::Hot => "one hot product, one line an order".into(),
            ProductMix::Spread { products } => {
                format!("{products} products, Zipf-skewed, 1 to {MAX_LINES} lines an order")
            }
        }
    }
}

/// One product the load test stocks.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    /// Its id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its unit price in cents (an exact number of cents, so the JSON number is exact).
    pub unit_price_cents: u64,
}

/// The products of one run, with fresh ids.
pub fn products(mix: ProductMix) -> Vec<Product> {
    (0..mix.products())
        .map(|i| Product {
            id: Uuid::new_v4(),
            name: format!("Load test product {}", i + 1),
            unit_price_cents: 500 * (i as u64 % 20 + 1),
        })
        .collect()
}

/// Picks the product lines of orders: a small deterministic generator, so a seed repeats a run.
#[derive(Debug, Clone)]
pub struct Picker {
    mix: ProductMix,
    state: u64,
    /// Cumulative weights of the products, the last one 1.
    cumulative: Vec<f64>,
}

impl Picker {
    /// A picker for `mix`, seeded with `seed`.
    pub fn new(mix: ProductMix, seed: u64) -> Picker {
        let n = mix.products();
        let weights: Vec<f64> = (1..=n).map(|rank| 1.0 / rank as f64).collect();
        let sum: f64 = weights.iter().sum();
        let mut running = 0.0;
        let mut cumulative: Vec<f64> = weights
            .iter()
            .map(|w| {
                running += w / sum;
                running
            })
            .collect();
        if let Some(last) = cumulative.last_mut() {
            *last = 1.0;
        }
        Picker {
            mix,
            state: seed,
            cumulative,
        }
    }

    /// splitmix64: fast, well spread, and needs no dependency.
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in [0, 1).
    fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick_one(&mut self) -> usize {
        let u = self.next_unit();
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.cumulative.len() - 1)
    }

    /// The indexes (into [`products`]) of the next order's lines, distinct, one unit each.
    pub fn next_order(&mut self) -> Vec<usize> {
        match self.mix {
            ProductMix::Hot => vec![0],
            ProductMix::Spread { .. } => {
                let n = self.cumulative.len();
                let lines = (1 + (self.next_u64() % MAX_LINES as u64) as usize).min(n);
                let mut picked = Vec::with_capacity(lines);
                while picked.len() < lines {
                    let candidate = self.pick_one();
                    if !picked.contains(&candidate) {
                        picked.push(candidate);
                    }
                }
                picked
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hot_mix_buys_one_product() {
        let mut picker = Picker::new(ProductMix::Hot, 7);
        for _ in 0..100 {
            assert_eq!(picker.next_order(), vec![0]);
        }
        assert_eq!(products(ProductMix::Hot).len(), 1);
    }

    #[test]
    fn the_spread_mix_is_skewed_with_distinct_lines() {
        let mix = ProductMix::Spread { products: 50 };
        let mut picker = Picker::new(mix, 42);
        let mut counts = [0usize; 50];
        let mut lines = [0usize; 4];
        for _ in 0..20_000 {
            let order = picker.next_order();
            lines[order.len()] += 1;
            let mut distinct = order.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), order.len(), "no product twice in {order:?}");
            for i in order {
                counts[i] += 1;
            }
        }
        assert_eq!(lines[0], 0);
        assert!(
            lines[1..].iter().all(|&n| n > 6000),
            "1 to 3 lines: {lines:?}"
        );
        // Rank 1 weighs 50 times rank 50.
        assert!(counts[0] > 5 * counts[49], "skewed: {counts:?}");
        assert!(
            counts.iter().all(|&c| c > 0),
            "every product sells: {counts:?}"
        );
    }

    #[test]
    fn a_mix_of_fewer_products_than_lines_still_ends() {
        let mut picker = Picker::new(ProductMix::Spread { products: 2 }, 1);
        for _ in 0..100 {
            assert!(picker.next_order().len() <= 2);
        }
    }
}
