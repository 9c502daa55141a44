# The web console's messages (English, the reference: every key is here first).
# Keys are semantic: area-what. A key missing in another locale falls back to this file.

brand = LocalAIStack
nav-label = Sections
nav-overview = Overview
nav-resources = Resources
nav-events = Events
nav-history = History
nav-plan = Plan
nav-hardware = Hardware
nav-plugins = Plugins
nav-playground = Playground
lang-label = Language
live-on = Live
live-off = Not live

signin-title = Sign in
signin-body = Open the link that "lasctl ui" prints (or the daemon printed at start).
login-expired-title = Link expired
login-expired-body = This login link was used already or has expired. Run "lasctl ui" for a new one.
notfound-title = Not found
notfound-body = There is no such object (it may have been deleted).
csrf-title = Refused
csrf-body = This form did not carry this session's anti-forgery token. Reload the page and try again.
error-title = Error
action-failed-title = The action was refused

overview-title = Overview
overview-tier = Tier
overview-no-tier = No tier applies.
overview-memory = Memory per device
overview-measured-ram = Measured RAM of running workloads
overview-measured-vram = Measured VRAM of running workloads
overview-conditions = Objects by condition
overview-attention = Needs attention
count-objects = { $count ->
    [one] { $count } object
   *[other] { $count } objects
}
count-ready = { $count } ready
count-not-ready = { $count } not ready
count-unknown = { $count } unknown
memory-no-devices = No device is known.
legend-in-use = in use
legend-planned = planned

resources-title = Resources
resources-empty = Nothing here.
filter-kind = Kind
filter-all = All
filter-name = Name contains
filter-sort = Sort by
filter-apply = Show

kind-model = Model
kind-module = Module
kind-policy = Policy
kind-plugin = Plugin
kind-pluginactivation = Plugin activation

col-kind = Kind
col-name = Name
col-ready = Ready
col-reason = Reason
col-message = Message
col-generation = Generation
col-created = Created
col-type = Type
col-status = Status
col-since = Since
col-time = Time
col-object = Object
col-count = Count
col-action = Action
col-changes = Changes
col-added = Added
col-changed = Changed
col-removed = Removed
col-source = Source
col-detail = Detail
col-depends = Depends on
col-device = Device
col-capacity = Capacity
col-in-use = In use
col-planned = Planned
col-after = After
col-free = Free
col-bar = Projection
col-fact = Fact
col-value = Value
col-seam = Seam
col-accepts = Accepts
col-activation = Activation
col-plugin = Plugin
col-point = Point
col-calls = Calls
col-failures = Failures
col-breaker = Breaker
col-last-error = Last error
col-version = Version
col-grants-requested = Grants requested
col-grants-granted = Grants granted
col-grants-ungranted = Not granted

status-true = Yes
status-false = No
status-unknown = Unknown

object-title = Object
object-observed = observed
object-labels = Labels
object-conditions = Conditions
object-no-conditions = No conditions reported yet.
object-spec = Spec
object-status = Status
object-actions = Actions
object-delete = Delete

events-title = Events
events-empty = No events.
event-normal = Normal
event-warning = Warning

hardware-title = Hardware profile

history-title = History
history-empty = No generation is recorded.
history-rollback = Roll back to this
history-diff = Compare generations
history-from = From
history-to = To
history-compare = Compare
diff-empty = No difference.
revision-created = created
revision-changed = changed
revision-deleted = deleted
revision-present = present

rollback-title = Confirm the rollback
rollback-explain = Rolling back records one new generation whose desired state is that of generation { $value }. This is what changes:
rollback-owned = Watched directories own objects this changes; the daemon would apply them again and undo the rollback.
rollback-suspend = Suspend those directories (resume them with "lasctl resume source PATH")
rollback-confirm = Roll back
rollback-cancel = Cancel
rollback-done = Rolled back: generation { $value } recorded.

plan-title = Plan
plan-paste = Paste manifests (YAML, several documents allowed)
plan-submit = Plan
plan-apply = Apply
plan-refusals = Refusals
plan-no-refusals = Nothing is refused.
plan-actions = Actions, in order
plan-no-actions = No action is needed.
action-downloadmodel = download model
action-pullimage = pull image
action-createcontainer = create container
action-startprocess = start process
action-stop = stop
action-remove = remove

apply-title = Applied
apply-recorded = Generation { $value } recorded.
apply-nothing = Desired state already matched: nothing recorded.
change-created = created
change-configured = configured
change-unchanged = unchanged
change-pruned = pruned
change-deleted = deleted

plugins-title = Plugins
plugins-seams = Seams
plugins-not-pluggable = not pluggable
plugins-none-active = no active contribution
plugins-installed = Plugins
plugins-none = No plugin is installed.
plugins-activations = Activations
plugins-no-activations = No activation.
breaker-closed = closed

playground-title = Chat playground
playground-model = Model
playground-prompt = Message
playground-send = Send
playground-reply = Reply
playground-no-models = No model is served yet: apply a Module with spec.model and wait until it is Ready.
playground-curl = The same with curl
playground-python = The same in Python (openai package)
playground-default-prompt = Say hello in one short sentence.

reason-ready = Ready
reason-notready = Not ready
reason-reconciling = Reconciling
reason-stalled = Stalled
reason-unknown = Unknown
reason-progressing = Progressing
reason-downloading = Downloading
reason-starting = Starting
reason-running = Running
reason-failed = Failed
reason-refused = Refused
reason-deleting = Deleting
reason-applied = Applied
reason-suspended = Suspended
reason-resumed = Resumed
reason-created = Created
reason-configured = Configured
reason-pruned = Pruned
reason-deleted = Deleted
