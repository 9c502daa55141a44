;; event-log: an event sink that writes every event it is handed as one log line of the call.
;;
;; Entry `on_event` (see docs/plugin-abi.md, "Entries of the seams"): in {"event": {...},
;; "config": ...}, out a fixed {"ok":true}. It imports `las.log`, so its activation must grant
;; `log`; with `content` granted too, the events it logs carry their message.
;; Built with the `wat` crate (tests/sandbox.rs); the committed .wasm must match this file.
(module
  (import "las" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"ok\":true}") ;; 11 bytes
  (global $heap (mut i32) (i32.const 1024))
  (func (export "las_alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (local.get $ptr) (local.get $len)))
    (if (i32.gt_u (global.get $heap) (i32.shl (memory.size) (i32.const 16)))
      (then (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get $len) (i32.const 16)) (i32.const 1)))
                        (i32.const -1))
              (then (unreachable)))))
    (local.get $ptr))
  (func (export "on_event") (param $ptr i32) (param $len i32) (result i64)
    (call $log (local.get $ptr) (local.get $len))
    ;; (0 << 32) | 11
    (i64.const 11)))
