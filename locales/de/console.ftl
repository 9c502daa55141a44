# Die Texte der Web-Konsole (Deutsch). Die Schlüssel entsprechen locales/en/console.ftl.

brand = LocalAIStack
nav-label = Bereiche
nav-overview = Übersicht
nav-resources = Ressourcen
nav-events = Ereignisse
nav-history = Verlauf
nav-plan = Plan
nav-hardware = Hardware
nav-plugins = Plugins
nav-playground = Chat-Test
lang-label = Sprache
live-on = Live
live-off = Nicht live

signin-title = Anmelden
signin-body = Öffnen Sie den Link, den "lasctl ui" ausgibt (oder den der Daemon beim Start ausgegeben hat).
login-expired-title = Link abgelaufen
login-expired-body = Dieser Anmeldelink wurde schon benutzt oder ist abgelaufen. "lasctl ui" gibt einen neuen aus.
notfound-title = Nicht gefunden
notfound-body = Dieses Objekt gibt es nicht (vielleicht wurde es gelöscht).
csrf-title = Abgelehnt
csrf-body = Dieses Formular trug nicht das Fälschungsschutz-Token dieser Sitzung. Laden Sie die Seite neu und versuchen Sie es noch einmal.
error-title = Fehler
action-failed-title = Die Aktion wurde abgelehnt

overview-title = Übersicht
overview-tier = Stufe
overview-no-tier = Keine Stufe trifft zu.
overview-memory = Speicher je Gerät
overview-measured-ram = Gemessener Arbeitsspeicher laufender Workloads
overview-measured-vram = Gemessener Grafikspeicher laufender Workloads
overview-conditions = Objekte nach Zustand
overview-attention = Braucht Aufmerksamkeit
count-objects = { $count ->
    [one] { $count } Objekt
   *[other] { $count } Objekte
}
count-ready = { $count } bereit
count-not-ready = { $count } nicht bereit
count-unknown = { $count } unbekannt
memory-no-devices = Kein Gerät ist bekannt.
legend-in-use = belegt
legend-planned = geplant

resources-title = Ressourcen
resources-empty = Hier ist nichts.
filter-kind = Art
filter-all = Alle
filter-name = Name enthält
filter-sort = Sortieren nach
filter-apply = Anzeigen

kind-model = Modell
kind-module = Modul
kind-policy = Richtlinie
kind-plugin = Plugin
kind-pluginactivation = Plugin-Aktivierung

col-kind = Art
col-name = Name
col-ready = Bereit
col-reason = Grund
col-message = Meldung
col-generation = Generation
col-created = Erstellt
col-type = Typ
col-status = Status
col-since = Seit
col-time = Zeit
col-object = Objekt
col-count = Anzahl
col-action = Aktion
col-changes = Änderungen
col-added = Hinzugefügt
col-changed = Geändert
col-removed = Entfernt
col-source = Quelle
col-detail = Einzelheiten
col-depends = Hängt ab von
col-device = Gerät
col-capacity = Kapazität
col-in-use = Belegt
col-planned = Geplant
col-after = Danach
col-free = Frei
col-bar = Prognose
col-fact = Angabe
col-value = Wert
col-seam = Nahtstelle
col-accepts = Nimmt an
col-activation = Aktivierung
col-plugin = Plugin
col-point = Punkt
col-calls = Aufrufe
col-failures = Fehlschläge
col-breaker = Sicherung
col-last-error = Letzter Fehler
col-version = Version
col-grants-requested = Angeforderte Rechte
col-grants-granted = Gewährte Rechte
col-grants-ungranted = Nicht gewährt

status-true = Ja
status-false = Nein
status-unknown = Unbekannt

object-title = Objekt
object-observed = beobachtet
object-labels = Labels
object-conditions = Zustände
object-no-conditions = Noch keine Zustände gemeldet.
object-spec = Spezifikation
object-status = Status
object-actions = Aktionen
object-delete = Löschen

events-title = Ereignisse
events-empty = Keine Ereignisse.
event-normal = Normal
event-warning = Warnung

hardware-title = Hardwareprofil

history-title = Verlauf
history-empty = Keine Generation ist aufgezeichnet.
history-rollback = Hierhin zurücksetzen
history-diff = Generationen vergleichen
history-from = Von
history-to = Bis
history-compare = Vergleichen
diff-empty = Kein Unterschied.
revision-created = erstellt
revision-changed = geändert
revision-deleted = gelöscht
revision-present = vorhanden

rollback-title = Zurücksetzen bestätigen
rollback-explain = Das Zurücksetzen zeichnet eine neue Generation auf, deren Sollzustand der von Generation { $value } ist. Das ändert sich:
rollback-owned = Überwachte Verzeichnisse besitzen Objekte, die sich ändern; der Daemon würde sie erneut anwenden und das Zurücksetzen aufheben.
rollback-suspend = Diese Verzeichnisse aussetzen (fortsetzen mit "lasctl resume source PATH")
rollback-confirm = Zurücksetzen
rollback-cancel = Abbrechen
rollback-done = Zurückgesetzt: Generation { $value } aufgezeichnet.

plan-title = Plan
plan-paste = Manifeste einfügen (YAML, mehrere Dokumente erlaubt)
plan-submit = Planen
plan-apply = Anwenden
plan-refusals = Ablehnungen
plan-no-refusals = Nichts wird abgelehnt.
plan-actions = Aktionen, in Reihenfolge
plan-no-actions = Keine Aktion nötig.
action-downloadmodel = Modell herunterladen
action-pullimage = Image holen
action-createcontainer = Container erstellen
action-startprocess = Prozess starten
action-stop = anhalten
action-remove = entfernen

apply-title = Angewendet
apply-recorded = Generation { $value } aufgezeichnet.
apply-nothing = Der Sollzustand stimmte schon: nichts aufgezeichnet.
change-created = erstellt
change-configured = konfiguriert
change-unchanged = unverändert
change-pruned = bereinigt
change-deleted = gelöscht

plugins-title = Plugins
plugins-seams = Nahtstellen
plugins-not-pluggable = nicht erweiterbar
plugins-none-active = kein aktiver Beitrag
plugins-installed = Plugins
plugins-none = Kein Plugin ist installiert.
plugins-activations = Aktivierungen
plugins-no-activations = Keine Aktivierung.
breaker-closed = geschlossen

playground-title = Chat-Test
playground-model = Modell
playground-prompt = Nachricht
playground-send = Senden
playground-reply = Antwort
playground-no-models = Noch wird kein Modell bereitgestellt: Wenden Sie ein Modul mit spec.model an und warten Sie, bis es bereit ist.
playground-curl = Dasselbe mit curl
playground-python = Dasselbe in Python (Paket openai)
playground-default-prompt = Sag in einem kurzen Satz Hallo.

reason-ready = Bereit
reason-notready = Nicht bereit
reason-reconciling = Wird abgeglichen
reason-stalled = Blockiert
reason-unknown = Unbekannt
reason-progressing = In Arbeit
reason-downloading = Lädt herunter
reason-starting = Startet
reason-running = Läuft
reason-failed = Fehlgeschlagen
reason-refused = Abgelehnt
reason-deleting = Wird gelöscht
reason-applied = Angewendet
reason-suspended = Ausgesetzt
reason-resumed = Fortgesetzt
reason-created = Erstellt
reason-configured = Konfiguriert
reason-pruned = Bereinigt
reason-deleted = Gelöscht
