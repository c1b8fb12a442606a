"""Teachers behind one interface (`Teacher`), selected by backend name."""

from memdistill.generate.teachers.base import Completion, Failure, SamplingParams, Teacher, TeacherRequest

__all__ = ["Completion", "Failure", "SamplingParams", "Teacher", "TeacherRequest"]
