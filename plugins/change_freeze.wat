;; change-freeze: an admission check that refuses every object of the kinds its activation's
;; contribution sees (e.g. Modules during a release freeze).
;;
;; Entry `admit` (see docs/plugin-abi.md): in {"object": {...}, "config": ...}, out a fixed
;; {"action":"deny","reason":...,"field":"spec"}. It never reads its input.
;; Built with the `wat` crate (tests/sandbox.rs); the committed .wasm must match this file.
(module
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"action\":\"deny\",\"reason\":\"a change freeze is in effect: no object of this kind may be created or changed\",\"field\":\"spec\"}") ;; 122 bytes
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
  (func (export "admit") (param $ptr i32) (param $len i32) (result i64)
    ;; (0 << 32) | len
    (i64.const 122)))
