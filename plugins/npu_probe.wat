;; npu-probe: a hardware probe that recognises a made-up accelerator, the "Acme NPU 1" (PCI
;; vendor 0x1ab2, device 0x0001), among the PCI devices the host hands it.
;;
;; Entry `probe` (see docs/plugin-abi.md): in {"pci": [{"class","device","id","slot","vendor"},
;; ...], "cpu": ..., "config": ...}; out {"accelerators":N,"vendor":"acme","model":"Acme NPU 1"},
;; N the number of such devices. It counts occurrences of the exact text "id":"1ab2:0001" — the
;; host writes `id` as vendor:device in lower-case hex with canonical escapes, so a substring count
;; is exact.
;; Built with the `wat` crate (tests/sandbox.rs); the committed .wasm must match this file.
(module
  (memory (export "memory") 1)
  (data (i32.const 0) "\"id\":\"1ab2:0001\"") ;; 16 bytes
  (data (i32.const 64) "{\"accelerators\":") ;; 16 bytes
  (data (i32.const 96) ",\"vendor\":\"acme\",\"model\":\"Acme NPU 1\"}") ;; 38 bytes
  ;; 200..210: digits, reversed; 256..: the output.
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
  ;; Whether the 16-byte pattern starts at $at.
  (func $match (param $at i32) (result i32)
    (local $i i32)
    (block $no
      (loop $next
        (if (i32.ge_u (local.get $i) (i32.const 16)) (then (return (i32.const 1))))
        (br_if $no (i32.ne (i32.load8_u (i32.add (local.get $at) (local.get $i)))
                           (i32.load8_u (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))
  ;; Copies $n bytes from $src to $dst.
  (func $copy (param $dst i32) (param $src i32) (param $n i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (i32.store8 (i32.add (local.get $dst) (local.get $i))
                    (i32.load8_u (i32.add (local.get $src) (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next))))
  ;; Writes $n in decimal at $dst; returns the number of digits.
  (func $itoa (param $n i32) (param $dst i32) (result i32)
    (local $k i32) (local $j i32)
    (loop $digit
      (i32.store8 (i32.add (i32.const 200) (local.get $k))
                  (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digit (i32.ne (local.get $n) (i32.const 0))))
    (loop $rev
      (i32.store8 (i32.add (local.get $dst) (local.get $j))
                  (i32.load8_u (i32.add (i32.const 200)
                                        (i32.sub (i32.sub (local.get $k) (local.get $j)) (i32.const 1)))))
      (local.set $j (i32.add (local.get $j) (i32.const 1)))
      (br_if $rev (i32.lt_u (local.get $j) (local.get $k))))
    (local.get $k))
  (func (export "probe") (param $ptr i32) (param $len i32) (result i64)
    (local $i i32) (local $last i32) (local $n i32) (local $o i32)
    (if (i32.ge_u (local.get $len) (i32.const 16))
      (then
        (local.set $last (i32.add (local.get $ptr) (i32.sub (local.get $len) (i32.const 16))))
        (local.set $i (local.get $ptr))
        (loop $scan
          (if (call $match (local.get $i))
            (then (local.set $n (i32.add (local.get $n) (i32.const 1)))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $scan (i32.le_u (local.get $i) (local.get $last))))))
    (call $copy (i32.const 256) (i32.const 64) (i32.const 16))
    (local.set $o (i32.add (i32.const 272) (call $itoa (local.get $n) (i32.const 272))))
    (call $copy (local.get $o) (i32.const 96) (i32.const 38))
    (local.set $o (i32.add (local.get $o) (i32.const 38)))
    ;; (256 << 32) | (o - 256)
    (i64.or (i64.shl (i64.const 256) (i64.const 32))
            (i64.extend_i32_u (i32.sub (local.get $o) (i32.const 256))))))
