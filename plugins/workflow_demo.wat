;; workflow-demo: the example of commands and custom workflow nodes (see docs/plugins.md).
;;
;; Entries (see docs/plugin-abi.md):
;;   `args` (command):   in {"args": [...], "config": ...}  → {"text":"workflow-demo 1.0.0","received":<in>}
;;   `wrap` (custom node): in {<the node's parameters>, "config": ...} → {"wrapped":<in>}
;; Both copy the input document whole into a fixed envelope; the input is JSON already, so the
;; output is too.
;; Built with the `wat` crate (tests/sandbox.rs); the committed .wasm must match this file.
(module
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"text\":\"workflow-demo 1.0.0\",\"received\":") ;; 41 bytes
  (data (i32.const 64) "{\"wrapped\":") ;; 11 bytes
  (data (i32.const 80) "}")
  (global $heap (mut i32) (i32.const 1024))

  ;; Makes sure [0, $to) is inside the memory, growing it when needed.
  (func $ensure (param $to i32)
    (local $have i32)
    (local.set $have (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $to) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.shr_u (i32.add (i32.sub (local.get $to) (local.get $have)) (i32.const 65535))
                           (i32.const 16)))
              (i32.const -1))
          (then (unreachable))))))

  (func (export "las_alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (global.set $heap (i32.add (local.get $ptr) (local.get $len)))
    (call $ensure (global.get $heap))
    (local.get $ptr))

  (func $emit (param $src i32) (param $len i32)
    (call $ensure (i32.add (global.get $heap) (local.get $len)))
    (memory.copy (global.get $heap) (local.get $src) (local.get $len))
    (global.set $heap (i32.add (global.get $heap) (local.get $len))))

  ;; prefix ++ input ++ "}", as (ptr << 32) | len
  (func $envelope (param $pre i32) (param $prelen i32) (param $ptr i32) (param $len i32) (result i64)
    (local $out i32)
    (local.set $out (global.get $heap))
    (call $emit (local.get $pre) (local.get $prelen))
    (call $emit (local.get $ptr) (local.get $len))
    (call $emit (i32.const 80) (i32.const 1))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
            (i64.extend_i32_u (i32.sub (global.get $heap) (local.get $out)))))

  (func (export "args") (param $ptr i32) (param $len i32) (result i64)
    (call $envelope (i32.const 0) (i32.const 41) (local.get $ptr) (local.get $len)))

  (func (export "wrap") (param $ptr i32) (param $len i32) (result i64)
    (call $envelope (i32.const 64) (i32.const 11) (local.get $ptr) (local.get $len)))
)
