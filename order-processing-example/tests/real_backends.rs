//! The contract on PostgreSQL, RabbitMQ and Redis, all five services in one process. Each test
//! has its own schema, exchange, queues and key prefix.

mod common;

use common::Backend;

scenario_tests!(Backend::Real; a_paid_order_is_confirmed_notified_and_counted, too_little_stock_cancels_the_order_and_changes_no_stock, an_unknown_product_cancels_the_order, a_declined_payment_cancels_the_order_and_restores_the_stock, an_order_nobody_pays_times_out_and_releases_its_stock, sixty_orders_for_twenty_units_confirm_exactly_twenty, analytics_counts_each_event_and_answers_ranges, an_idempotency_key_answers_the_same_order, a_customers_orders_are_listed_newest_first, every_service_serves_health_openapi_and_scalar, every_service_serves_metrics, products_are_seeded_and_can_be_stocked);
